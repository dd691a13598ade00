"""What is left of a study, worked out once: the dataset (collect, then annotate), the
encoders, the fine-tuning runs, then the report.

``semore-compare --print-commands`` prints this plan, the local runner runs it and
``--launcher slurm`` submits it as dependent stages (``pipeline.compare.slurm``); none of them
decides again what is finished. A stage is left out once its work is on disk: a complete
dataset, an encoder's export, a run at the study's budget, or a run that the results folder
named with ``--report`` holds (``pipeline.compare.carry``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.run import pending_slices as annotate_pending
from pipeline.collect.config import CollectConfig
from pipeline.collect.run import pending_slices as collect_pending
from pipeline.compare.carry import carried_records, kept_runs, restore_encoders
from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import Command, Job, finetune_jobs, pretrain_jobs
from pipeline.compare.records import RunRecord
from pipeline.config import load_config, override_flags
from pipeline.data import manifest as mf
from pipeline.launch.cli import task_argv

log = logging.getLogger(__name__)

COLLECT_MODULE = "pipeline.collect.run"
ANNOTATE_MODULE = "pipeline.annotate.run"
COMPARE_MODULE = "pipeline.compare.run"
DATA_DIR = "data"
# Flags of the command that planned the study which the report command must not repeat.
_NOT_IN_REPORT = ("--print-commands", "--report-only")


@dataclass
class StudyPlan:
    """A study's unfinished work in dependency order; each stage needs the one before."""

    dataset: list[Command]  # collect, then annotate; empty once the dataset is complete
    encoders: list[Job]  # pretraining jobs whose encoder has no export yet
    runs: list[Job]  # fine-tuning runs short of the budget that the results folder lacks
    # Every fine-tuning run of the study (seed-major), and those the results folder holds.
    all_runs: list[Job] = field(default_factory=list)
    kept: dict[Job, RunRecord] = field(default_factory=dict)
    # The semore-compare command that aggregates the finished runs (always left: the report
    # is rebuilt whenever runs may have finished).
    report: Command = field(default_factory=lambda: Command(COMPARE_MODULE, ["--report-only"]))

    def stages(self) -> list[tuple[str, list[Command]]]:
        """(name, commands) of every stage, the report excluded; empty stages included."""
        named = [(step.stage, [step]) for step in self.dataset]
        return [*named, ("encoders", self.encoders), ("fine-tuning runs", self.runs)]


def dataset_commands(cfg: CompareConfig, out: Path) -> list[Command]:
    """The collect and annotate commands that build the study's dataset in ``OUT/data``."""
    if cfg.dataset is None:
        return []
    data, ds = str(out / DATA_DIR), cfg.dataset
    collect = ["--config", ds.collect, "--out", data, *override_flags(ds.collect_overrides)]
    annotate = ["--config", ds.annotate, "--data", data, *override_flags(ds.annotate_overrides)]
    return [
        Command(COLLECT_MODULE, [*collect, "--quiet"]),
        Command(ANNOTATE_MODULE, [*annotate, "--quiet"]),
    ]


def dataset_done(cfg: CompareConfig, out: Path) -> bool:
    """Whether ``OUT/data`` holds the study's whole dataset, collected and annotated (a
    dataset made from another collect config is a one-line error here)."""
    if cfg.dataset is None:
        return True
    data, ds = out / DATA_DIR, cfg.dataset
    if mf.read_manifest(data, required=False) is None:
        return False
    collect_cfg = load_config(CollectConfig, ds.collect, ds.collect_overrides, "collect")
    annotate_cfg = load_config(AnnotateConfig, ds.annotate, ds.annotate_overrides, "annotate")
    return not collect_pending(collect_cfg, data, 1) and not annotate_pending(annotate_cfg, data, 1)


def report_argv(argv: list[str]) -> list[str]:
    """The planning command's arguments as the report command: ``--report-only``, without the
    launch flags or ``--print-commands``."""
    kept = [arg for arg in task_argv(argv) if arg not in _NOT_IN_REPORT]
    return [*kept, "--report-only"]


def plan_study(
    cfg: CompareConfig,
    out: Path,
    carry: Path | None = None,
    argv: list[str] = (),
    restore: bool = True,
) -> StudyPlan:
    """What is left of the study ``cfg`` in ``out``; ``argv`` is the command line that asked.

    Encoders the results folder ``carry`` keeps are first copied into place
    (:func:`~pipeline.compare.carry.restore_encoders`): restoring is not pretraining, so
    they are not left to do. ``restore=False`` plans without writing to ``out`` (a report
    read beside a running study).
    """
    if restore:
        restore_encoders(cfg, out, carry)
    dataset = [] if dataset_done(cfg, out) else dataset_commands(cfg, out)
    encoders = [job for job in pretrain_jobs(cfg, out) if not job.finished(0)]
    all_runs = finetune_jobs(cfg, out)
    unfinished = [job for job in all_runs if not job.finished(cfg.num_train_steps)]
    kept = carried_records(cfg.num_train_steps, carry, unfinished)
    if kept_runs(carry):
        log.info("%d finished run(s) kept in %s: not run again", len(kept), carry)
    runs = [job for job in unfinished if job not in kept]
    report = Command(COMPARE_MODULE, report_argv(list(argv)))
    return StudyPlan(dataset, encoders, runs, all_runs, kept, report)


def setup_commands(cfg: CompareConfig, out: Path) -> list[list[str]]:
    """Every dataset and encoder command of the study, done or not, as a new user types it
    (no ``--resume``: resuming is a rerun's business): the head of ``commands.sh``."""
    steps = [*dataset_commands(cfg, out), *pretrain_jobs(cfg, out)]
    return [[arg for arg in step.script_command if arg != "--resume"] for step in steps]
