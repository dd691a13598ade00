"""``semore-push``: publish a dataset to the Hugging Face Hub (or a local folder) with its card.

``card`` renders the dataset card, ``push`` checks, exports and uploads, ``run`` is the
command line.
"""
