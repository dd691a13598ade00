"""A study (``semore-compare --launcher slurm``) as stages of tasks: the dataset (collect, then
annotate), the encoders, the fine-tuning runs, then the report; only what is unfinished."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.compare.carry import carried_records, restore_encoders
from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import PRETRAIN_MODULE, Job, dataset_commands, plan_jobs, pretrain_jobs
from pipeline.config import load_config
from pipeline.launch.cli import LOGS_DIR, SUBMITIT_DIR, task_argv
from pipeline.launch.submit import Stage, Task, launch

COMPARE_MODULE = "pipeline.compare.run"


def job_task(job: Job, threads: int) -> Task:
    """A study job as a task; its log is the one the local runner writes (``RUN.log``)."""
    name = f"encoder {job.arm}" if job.module == PRETRAIN_MODULE else f"{job.arm} seed {job.seed}"
    # Fine-tuning jobs always pass --resume; pretraining jobs only when a checkpoint exists
    # at planning time, so a requeued one is told to resume.
    return Task(name, job.command, job.out.with_suffix(".log"), threads, requeue_flags=["--resume"])


def dataset_stages(cfg: CompareConfig, out: Path, threads: int) -> list[Stage]:
    """Collect, then annotate the study's dataset, each as one task; none once it is done."""
    from pipeline.annotate.config import AnnotateConfig
    from pipeline.annotate.run import pending_slices as annotate_pending
    from pipeline.collect.config import CollectConfig
    from pipeline.collect.run import pending_slices as collect_pending

    if cfg.dataset is None:
        return []
    ds, data = cfg.dataset, out / "data"
    collect_cfg = load_config(CollectConfig, ds.collect, ds.collect_overrides, stage="collect")
    annotate_cfg = load_config(AnnotateConfig, ds.annotate, ds.annotate_overrides, "annotate")
    if not collect_pending(collect_cfg, data, 1) and not annotate_pending(annotate_cfg, data, 1):
        return []
    stages = []
    for main_fn, argv in dataset_commands(cfg, out):
        name = main_fn.__module__.split(".")[1]  # pipeline.collect.run -> collect
        command = [sys.executable, "-m", main_fn.__module__, *argv, "--quiet"]
        stages.append(Stage(name, [Task(name, command, out / LOGS_DIR / f"{name}.log", threads)]))
    return stages


def study_stages(
    cfg: CompareConfig, out: Path, argv: list[str], carry: Path | None = None
) -> list[Stage]:
    """Every unfinished stage of the study in dependency order, the report last.

    ``argv`` is the submitting ``semore-compare`` command line; the report task re-runs it with
    ``--report-only`` once the runs have finished. Encoders and finished runs that the results
    folder ``carry`` keeps are restored and left out (``pipeline.compare.carry``).
    """
    threads = cfg.launcher.cpus_per_task
    stages = dataset_stages(cfg, out, threads)
    restore_encoders(cfg, out, carry)
    encoders = [j for j in pretrain_jobs(cfg, out) if not j.finished(0)]
    stages.append(Stage("encoders", [job_task(j, threads) for j in encoders]))
    runs = [j for j in plan_jobs(cfg, out) if not j.finished(cfg.num_train_steps)]
    kept = carried_records(cfg, carry, runs)
    runs = [j for j in runs if j not in kept]
    stages.append(Stage("fine-tuning runs", [job_task(j, threads) for j in runs]))
    report = [sys.executable, "-m", COMPARE_MODULE, *task_argv(argv), "--report-only"]
    stages.append(Stage("report", [Task("report", report, out / LOGS_DIR / "report.log", threads)]))
    return stages


def launch_study(
    cfg: CompareConfig, out: Path, argv: list[str], wait: bool, carry: Path | None = None
) -> bool:
    """Submit the study's unfinished stages; True once they have finished (``wait``)."""
    launch(study_stages(cfg, out, argv, carry), cfg.launcher, out / LOGS_DIR / SUBMITIT_DIR, wait)
    return wait or cfg.launcher.cluster == "local"
