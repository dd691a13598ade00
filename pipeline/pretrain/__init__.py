"""Stage 3a, ``semore-pretrain`` and ``semore-probe``: train and probe the encoder.

``config`` holds the typed config, ``datamodule`` streams raw + annotation shards into batches,
``module`` is the Lightning module around the method's model and loss, ``run`` is the command
line, ``probe`` fits linear probes of a frozen encoder on held-out episodes.
"""
