"""``--launcher slurm``: a command's work submitted to SLURM through submitit (collect and
annotate as job arrays over their slices, a study as its stages in dependency order).

Our code only says what to run (:class:`~pipeline.launch.submit.Task`: a command line and its
log); resources, arrays, dependencies, retries and requeueing are SLURM's and submitit's.
submitit is the optional extra ``semore[cluster]``, imported only when a launch happens.
"""

from pipeline.launch.config import LAUNCHERS, LauncherConfig

__all__ = ["LAUNCHERS", "LauncherConfig"]
