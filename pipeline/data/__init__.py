"""The on-disk contracts the stages share.

``schema`` names the members, keys and format version; ``shards`` writes and reads tar
shards atomically; ``manifest`` reads and writes ``manifest.json``; ``dataset`` records
completed shards into it; ``source`` says where a dataset lives (a folder or
``hf://datasets/...``) and lists its shard pairs; ``windows`` turns shard pairs into frame-stack
windows and batches; ``checkpoint`` reads a fine-tuning run's checkpoint (for the probe and
the benchmarks as for a resume). Stages read each other's outputs through this package.
"""
