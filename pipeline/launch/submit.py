"""Stages of tasks submitted through submitit: each stage one job array, each depending on the
stage before; resources, arrays, dependencies and requeueing are SLURM's and submitit's.

A :class:`Task` is one command line (a stage's own CLI with its slice or run); submitit pickles
it, SLURM runs it on a node, and the command's output is appended to the task's log, as the
local runner does. On the local executor (``launcher.cluster: local``), which knows no
dependencies, each stage waits for the one before.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.errors import SemoreError
from pipeline.launch.config import LauncherConfig

log = logging.getLogger(__name__)


def task_env(threads: int) -> dict[str, str]:
    """The environment of a stage's subprocess, here or on a node: ``threads`` OpenMP / MKL
    threads (oversubscribed threads stall, and thread counts change the numbers), and
    highway-env's headless renderer unless one is set."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("SDL_VIDEODRIVER", "offscreen")
    return env


class TaskFailed(SemoreError):
    """A task's command exited non-zero (raised on the node, so SLURM marks the job failed)."""


@dataclass
class Task:
    name: str  # how errors and progress lines name it: "collect worker 1", "scratch seed 0"
    command: list[str]
    log: Path  # the command's stdout and stderr are appended here
    threads: int = 1  # OMP/MKL threads: the cores SLURM gives the task
    cwd: str = field(default_factory=os.getcwd)  # relative paths mean what they meant here
    # Appended when SLURM preempts or times out the task and submitit requeues it (e.g.
    # --resume for a stage that only resumes when told to).
    requeue_flags: list[str] = field(default_factory=list)

    def __call__(self) -> str:
        env = task_env(self.threads)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as handle:
            code = subprocess.run(
                self.command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
            ).returncode
        if code != 0:
            raise TaskFailed(f"{self.name} failed (exit {code}): see {self.log}")
        return self.name

    def checkpoint(self):
        """submitit calls this on preemption or time-out: requeue the task, resuming."""
        from submitit.helpers import DelayedSubmission

        flags = [flag for flag in self.requeue_flags if flag not in self.command]
        return DelayedSubmission(replace(self, command=[*self.command, *flags]))


@dataclass
class Stage:
    name: str  # "collect", "encoders", "fine-tuning runs", ...
    tasks: list[Task]


def import_submitit():
    """submitit, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SemoreError(
            "--launcher slurm needs submitit, which is not installed: expected "
            "pip install 'semore[cluster]'"
        ) from None
    # submitit configures its own logger on import (INFO, own handlers): keep its warnings,
    # printed once.
    submitit_log = logging.getLogger("submitit")
    submitit_log.propagate = False
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        submitit_log.setLevel(logging.WARNING)
    return submitit


def make_executor(cfg: LauncherConfig, folder: Path, name: str, after: list[str]):
    """A submitit executor for one stage: ``cfg``'s resources, depending on jobs ``after``."""
    submitit = import_submitit()
    if cfg.cluster == "slurm":
        for command in ("sbatch", "srun"):
            if shutil.which(command) is None:
                raise SemoreError(
                    f"--launcher slurm needs SLURM's {command} on PATH: not found (expected a "
                    "cluster's login node, or --launcher.cluster local to try it here)"
                )
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cfg.cluster, slurm_max_num_timeout=cfg.max_requeues
    )
    flags = dict(cfg.sbatch_flags)
    if after:
        # afterok: a stage runs only on its inputs; kill-on-invalid-dep: when one of them
        # fails, SLURM cancels the dependent jobs instead of leaving them pending forever.
        flags.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
    executor.update_parameters(
        name=f"semore-{name.replace(' ', '-')}",
        timeout_min=cfg.time_min,
        cpus_per_task=cfg.cpus_per_task,
        gpus_per_node=cfg.gpus_per_task or None,  # one task per job: per node = per task
        mem_gb=cfg.mem_gb or None,
        slurm_partition=cfg.partition,
        slurm_account=cfg.account,
        slurm_array_parallelism=cfg.array_parallelism,
        slurm_additional_parameters=flags,
    )
    return executor


def array_ids(jobs: list) -> list[str]:
    """SLURM job ids of ``jobs`` (an array's tasks ``123_0``, ``123_1`` share job ``123``)."""
    return sorted({str(job.job_id).split("_")[0] for job in jobs}, key=lambda i: (len(i), i))


def launch(
    stages: list[Stage], cfg: LauncherConfig, folder: Path, wait: bool = False
) -> list[tuple[Task, object]]:
    """Submit ``stages`` in order (empty ones are skipped); returns (task, job) pairs.

    With ``wait`` (always on the local executor) it returns once every task has finished,
    and raises one line naming the first failed task's log when any failed.
    """
    wait = wait or cfg.cluster == "local"
    folder.mkdir(parents=True, exist_ok=True)
    submitted: list[tuple[Task, object]] = []
    after: list[str] = []
    for stage in (s for s in stages if s.tasks):
        if cfg.cluster == "local" and submitted:
            _raise_failures(_wait_for(submitted, cfg))  # the local executor has no dependencies
        executor = make_executor(cfg, folder, stage.name, after)
        try:
            jobs = executor.submit_array(stage.tasks)
        except Exception as err:  # sbatch's own message: unknown partition, bad option ...
            text = str(err).strip().splitlines()
            raise SemoreError(
                f"submitting stage {stage.name} failed: {text[0] if text else type(err).__name__}"
            ) from None
        after = array_ids(jobs)
        print(f"{stage.name}: {len(jobs)} task(s), job {','.join(after)}", flush=True)
        submitted += list(zip(stage.tasks, jobs, strict=True))
    if not submitted:
        return submitted
    if wait:
        _raise_failures(_wait_for(submitted, cfg))
    elif cfg.cluster == "slurm":
        ids = ",".join(array_ids([job for _, job in submitted]))
        print(
            f"follow with: squeue -j {ids}; logs in {folder} and each task's own log; "
            "rerun the same command to submit what is unfinished",
            flush=True,
        )
    return submitted


def _raise_failures(failures: list[str]) -> None:
    if failures:
        more = f" ({len(failures) - 1} more task(s) failed)" if len(failures) > 1 else ""
        raise SemoreError(f"{failures[0]}{more}")


def _wait_for(pairs: list[tuple[Task, object]], cfg: LauncherConfig) -> list[str]:
    """Poll until every job has a result or has left SLURM's queue; returns failure lines.

    On SLURM, a job's result file and squeue tell its state: sacct (what ``job.done()``
    asks) needs an accounting database, which small clusters and the test cluster lack.
    """
    pending, failures = list(pairs), []
    gone: dict[str, int] = {}  # polls a job was seen neither finished nor queued
    while pending:
        queued = _queued(pending) if cfg.cluster == "slurm" else None
        still = []
        for task, job in pending:
            if job.paths.result_pickle.exists() if queued is not None else job.done():
                failure = _failure(task, job)
                if failure:
                    failures.append(failure)
                continue
            if queued is not None and str(job.job_id) not in queued:
                gone[job.job_id] = gone.get(job.job_id, 0) + 1
                if gone[job.job_id] > 2:  # its result file may lag on a shared file system
                    failures.append(
                        f"{task.name} ended without a result (cancelled, killed, or an earlier "
                        f"stage failed): see {job.paths.stderr}"
                    )
                    continue
            still.append((task, job))
        pending = still
        if pending:
            time.sleep(cfg.poll_s)
    return failures


def _queued(pairs: list[tuple[Task, object]]) -> set[str]:
    """Ids (``123_0``, ``124``) of these jobs that squeue still lists, pending or running."""
    ids = ",".join(array_ids([job for _, job in pairs]))
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "-j", ids], capture_output=True, text=True
    )
    # squeue fails with "Invalid job id" once none of them is known any more.
    return set(out.stdout.split()) if out.returncode == 0 else set()


def _failure(task: Task, job) -> str | None:
    """None for a task that finished, else one line naming its log."""
    error = job.exception()
    if error is None:
        return None
    marker = f"{TaskFailed.__module__}.{TaskFailed.__name__}: "
    for line in reversed(str(error).splitlines()):
        if line.startswith(marker):
            return line[len(marker) :]
    return f"{task.name} failed before its command ran: see {job.paths.stderr}"
