"""Stage 2, ``semore-annotate``: captioners, text encoders and the shard annotator.

``run`` is the command line; ``annotator`` annotates one raw shard; ``scene`` and ``vlm``
are the captioners (interface in ``base``); ``text_encoders`` embeds captions;
``config`` holds the typed config (motion targets are read by ``pipeline.data.schema``).
"""
