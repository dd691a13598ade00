"""``semore-inspect``: an HTML page and a PNG contact sheet of a dataset's episodes.

``page`` reads episodes and renders both views; ``run`` is the command line.
"""
