"""``semore-compare``: a multi-seed study of fine-tuning arms, with sound statistics.

``config`` holds the typed study config (dataset, encoders, arms, seeds, budget); ``jobs`` the
study's jobs (one pretraining job per study encoder, one ``semore-finetune`` run per arm and
seed) and the local runner; ``plan`` what is left of a study (dataset, encoders, runs,
report), which the printed commands, the local runner and ``slurm`` (the plan as SLURM
stages) all read; ``carry`` how a committed results folder carries a study on;
``continuation`` which arms a longer study continues from a shorter one; ``records``
the finished runs; ``learner`` the check that arms share one learner; ``estimates`` rliable's
aggregates; ``analysis`` every number of a report; ``report``, ``writing`` and ``plots`` the
results folder; ``run`` the command line. Study presets are in ``pipeline/presets/compare/``.
"""
