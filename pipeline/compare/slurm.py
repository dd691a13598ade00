"""A study on SLURM (``semore-compare --launcher slurm``): its plan (``pipeline.compare.plan``)
as stages of tasks in dependency order, the dataset (collect, then annotate), the encoders,
the fine-tuning runs, then the report, submitted through the generic launcher
(``pipeline.launch``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import PRETRAIN_MODULE, Command, Job
from pipeline.compare.plan import StudyPlan
from pipeline.launch.cli import LOGS_DIR, SUBMITIT_DIR
from pipeline.launch.submit import Stage, Task, launch


def _task(command: Command, out: Path, threads: int) -> Task:
    """A study command as a task; a job's log is the one the local runner writes (``RUN.log``)."""
    if not isinstance(command, Job):  # a dataset stage: OUT/logs/collect.log
        log = out / LOGS_DIR / f"{command.stage}.log"
        return Task(command.stage, command.command, log, threads)
    pretrain = command.module == PRETRAIN_MODULE
    name = f"encoder {command.arm}" if pretrain else f"{command.arm} seed {command.seed}"
    # Fine-tuning jobs always pass --resume; pretraining jobs only when a checkpoint exists
    # at planning time, so a requeued one is told to resume.
    log = command.out.with_suffix(".log")
    return Task(name, command.command, log, threads, requeue_flags=["--resume"])


def study_stages(plan: StudyPlan, out: Path, threads: int) -> list[Stage]:
    """The plan's stages as tasks of ``threads`` cores each, the report last."""
    stages = [
        Stage(name, [_task(c, out, threads) for c in commands]) for name, commands in plan.stages()
    ]
    report = Task("report", plan.report.command, out / LOGS_DIR / "report.log", threads)
    stages.append(Stage("report", [report]))
    return stages


def launch_study(plan: StudyPlan, cfg: CompareConfig, out: Path, wait: bool) -> bool:
    """Submit the plan's stages; True once they have finished (``wait``, or the local
    executor)."""
    stages = study_stages(plan, out, cfg.launcher.cpus_per_task)
    launch(stages, cfg.launcher, out / LOGS_DIR / SUBMITIT_DIR, wait)
    return wait or cfg.launcher.cluster == "local"
