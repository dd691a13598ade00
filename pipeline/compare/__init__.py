"""``semore-compare``: a multi-seed study of fine-tuning arms, with sound statistics.

``config`` holds the typed study config (arms, seeds, budget), ``stats`` the aggregate
statistics (IQM, stratified bootstrap intervals, performance profiles, steps to a threshold),
``jobs`` the planned jobs (one pretraining job per study encoder, one ``semore-finetune``
job per arm and seed) and the local runner, ``report`` the results folder (table, curves,
per-run CSVs, commands), ``run`` the command line that runs (or prints) the jobs.
"""
