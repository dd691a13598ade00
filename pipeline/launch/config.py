"""Typed ``launcher:`` config section: what SLURM is asked for, per task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from semore.checks import MAX_PROCESSES, Float, Int, check_fields

LAUNCHERS = ("local", "slurm")


@dataclass
class LauncherConfig:
    """Resources and submission settings of ``--launcher slurm`` (each field is per task).

    A resume may change every field: where and how fast work runs never changes what it makes.
    """

    # slurm: sbatch through submitit. local: submitit's local executor runs the same tasks as
    # processes on this machine (no cluster), to try a launch before taking it to one.
    cluster: Literal["slurm", "local"] = "slurm"
    # None: the cluster's default partition (the one sinfo marks with *).
    partition: str | None = None
    # None: the user's default account; clusters that bill by project need one.
    account: str | None = None
    # Wall-clock limit of one task. Four hours fit a quickstart-sized collect slice or a
    # fine-tuning run with room to spare and still pass most partitions' default limits; a task
    # that hits it is requeued (see max_requeues) and resumes from its last shard/checkpoint.
    time_min: int = 240
    # Cores per task; the task's torch/OpenMP threads are set to this, as the local runner
    # gives each of its jobs cores // jobs threads. Two keep one simulator and its renderer busy.
    cpus_per_task: int = 2
    # GPUs per task: 0 for CPU stages; 1 for an annotate task with a VLM, a CARLA collect task,
    # or GPU pretraining/fine-tuning.
    gpus_per_task: int = 0
    # Memory per task in GB; 0 asks for nothing, so the partition's default per-CPU memory
    # applies (admins size it for their nodes).
    mem_gb: float = 0.0
    # At most this many tasks of one array run at once; 64 keeps a big study from filling a
    # shared partition, and SLURM starts the rest as these finish.
    array_parallelism: int = 64
    # Requeues of a task that SLURM preempts or times out (submitit's max_num_timeout): every
    # stage resumes, so a requeued task continues where it stopped.
    max_requeues: int = 3
    # Any other sbatch option, without the dashes: {qos: high, constraint: a100}.
    sbatch_flags: dict[str, str] = field(default_factory=dict)
    # Seconds between checks while --wait follows the jobs: cheap for the controller, and
    # short next to any task's run time.
    poll_s: float = 5.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            time_min=Int(1, 525_600),  # a year: past any partition's limit
            cpus_per_task=Int(1, MAX_PROCESSES),
            gpus_per_task=Int(0, 64),
            mem_gb=Float(0.0, 1e5),
            array_parallelism=Int(1, 10**6),
            max_requeues=Int(0, 1000),
            poll_s=Float(0.0, 3600.0, low_open=True),
        )
