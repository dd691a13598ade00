"""Stage 3b, ``semore-finetune``: SAC + DrQ in a live simulator.

``config`` holds the typed config, ``env`` steps the simulator for the agent (frame stack,
action repeat, retries), ``loop`` is the online trainer (updates, checkpoints, resume),
``eval`` runs evaluation episodes and keeps the metrics log and curves, ``run`` is the
command line.
"""
