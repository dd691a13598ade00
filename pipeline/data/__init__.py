"""The on-disk data contract every stage shares.

``schema`` names the members, keys and format version; ``shards`` writes and reads tar
shards atomically; ``manifest`` reads and writes ``manifest.json``; ``dataset`` records
completed shards into it; ``source`` says where a dataset lives (a folder or
``hf://datasets/...``) and lists its shard pairs; ``windows`` turns shard pairs into frame-stack
windows and batches. Stages import this package, never each other.
"""
