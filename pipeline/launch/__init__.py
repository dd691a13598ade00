"""``--launcher slurm``: a command's work submitted to SLURM through submitit, as stages of
tasks in dependency order (collect and annotate submit one job array over their slices; a
study submits its plan, ``pipeline.compare.slurm``).

This is a shared tool below the stages: it knows command lines, logs and resources, and
imports no stage. Our code only says what to run (:class:`~pipeline.launch.submit.Task`: a
command line and its log); resources, arrays, dependencies, retries and requeueing are SLURM's
and submitit's. submitit is the optional extra ``semore[cluster]``, imported only when a
launch happens.
"""

from pipeline.launch.config import LAUNCHERS, LauncherConfig

__all__ = ["LAUNCHERS", "LauncherConfig"]
