"""Stage 1, ``semore-collect``: record driving episodes into raw shards.

``config`` holds the typed config, ``recorder`` writes one shard of episodes, ``run`` is the
command line (resume, worker slices, local worker processes).
"""
