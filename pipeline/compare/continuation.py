"""A continuation study: the best method arm and the strongest baseline of a shorter study go on
to a longer budget (``continue_best`` in a ``*_20k`` preset).

The pick is made once, from the shorter study's runs in the same ``--out`` (every run must
have reached ``from_step``), on the IQM there: the arm the report would call best, so the
longer budget is spent on the comparison that is still open and no one chooses by hand. The
pick is written into the results folder's ``study.yaml`` (``continue_best.picked``), where a
rebuilt report (``--from-results``) or a fresh checkout (``--report`` carries the study on)
reads it instead of picking again from run folders that may be gone. Before any continued run
has finished (nothing recorded yet) on a fresh checkout, the pick reads the shorter study's own
results folder (``continue_best.from_results``), which keeps every run's CSV; runs whose
checkpoints are gone then start again from step 0 (same seed, same learner).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from pipeline.compare.analysis import best_arm
from pipeline.compare.carry import carried_records
from pipeline.compare.config import CompareConfig
from pipeline.compare.estimates import iqm_points
from pipeline.compare.jobs import Job, finetune_jobs
from pipeline.compare.records import RunRecord, from_job, score_matrix
from pipeline.compare.results_schema import STUDY_NAME, check_results_folder
from pipeline.config import load_config
from pipeline.errors import SemoreError

log = logging.getLogger(__name__)


def _kept_pick(folder: Path | None) -> dict[str, float]:
    """The pick a results folder's study.yaml recorded (empty when it has none)."""
    if folder is None or not (folder / STUDY_NAME).is_file():
        return {}
    kept = load_config(CompareConfig, folder / STUDY_NAME, stage="compare").continue_best
    return dict(kept.picked) if kept is not None else {}


def _kept_in(folder: str | None, step: int, todo: list[Job], out: Path) -> dict[Job, RunRecord]:
    """The records of ``todo`` that ``continue_best.from_results`` keeps up to ``step``."""
    if folder is None:
        return {}
    if not Path(folder).is_dir():
        raise SemoreError(
            f"continue_best.from_results {folder} is not a folder: expected the shorter "
            f"study's results folder (the --report of its runs in {out})"
        )
    check_results_folder(Path(folder))
    kept = carried_records(step, Path(folder), todo)
    if kept:
        log.info("continue_best reads %d run(s) kept in %s", len(kept), folder)
    return kept


def _shorter_runs(cfg: CompareConfig, out: Path, step: int) -> list[RunRecord]:
    """The shorter study's runs up to ``step``: those ``continue_best.from_results`` keeps (its
    committed record; a run in ``out`` may be a longer rerun), the others from ``out``."""
    jobs = finetune_jobs(cfg, out)
    short = [job for job in jobs if not job.finished(step)]
    folder = cfg.continue_best.from_results
    kept = _kept_in(folder, step, jobs, out)
    missing = [job for job in short if job not in kept]
    if missing and folder is not None:
        first = missing[0]
        raise SemoreError(
            f"continue_best.from_results {folder} lacks {len(missing)} of {len(jobs)} runs "
            f"(first: {first.arm} seed {first.seed}): expected the shorter study's results "
            "folder with every run finished"
        )
    if missing:
        first = missing[0]
        raise SemoreError(
            f"continue_best picks on the IQM at step {step}, but {len(missing)} of {len(jobs)} "
            f"runs have not reached it (first: {first.arm} seed {first.seed} in {first.out}): "
            "expected the shorter study finished first in the same --out, or its results folder "
            "as continue_best.from_results"
        )
    return [kept.get(job) or from_job(job, step) for job in jobs]


def _iqms_at(cfg: CompareConfig, out: Path, step: int) -> dict[str, float]:
    """Each arm's IQM at ``step`` over the shorter study's runs (all must have reached it)."""
    steps, scores = score_matrix(_shorter_runs(cfg, out, step))
    if step not in steps:
        raise SemoreError(
            f"continue_best.from_step {step} is not an evaluated step of the runs in {out} "
            f"(last: {steps[-1]}): expected a multiple of eval_every_steps"
        )
    column = int(np.flatnonzero(steps == step)[0])
    return {arm: float(curve[column]) for arm, curve in iqm_points(scores).items()}


def pick(cfg: CompareConfig, out: Path | None, carry: Path | None = None) -> dict[str, float]:
    """arm -> IQM at ``from_step`` of the arms that go on: as recorded (in ``cfg`` or in the
    results folder ``carry``), else picked from the runs in ``out``."""
    cont = cfg.continue_best
    recorded = cont.picked or _kept_pick(carry)
    if recorded:
        return recorded
    if out is None:
        raise SemoreError(
            "continue_best has no recorded pick and no study folder to pick from: expected "
            "--out with the shorter study's runs"
        )
    iqm = _iqms_at(cfg, out, cont.from_step)
    method = [arm for arm in cfg.arms if arm not in cfg.baseline_arms]
    chosen = (best_arm(method, iqm), best_arm(list(cfg.baseline_arms), iqm))
    log.info(
        "continue_best at step %d: %s",
        cont.from_step,
        ", ".join(f"{arm} {iqm[arm]:.2f}{' (goes on)' if arm in chosen else ''}" for arm in iqm),
    )
    return {arm: round(iqm[arm], 4) for arm in chosen}


def continued(cfg: CompareConfig, out: Path | None, carry: Path | None = None) -> CompareConfig:
    """``cfg`` with only the arms that go on (``cfg`` itself when it is not a continuation)."""
    if cfg.continue_best is None:
        return cfg
    picked = pick(cfg, out, carry)
    try:
        return dataclasses.replace(
            cfg,
            arms={arm: spec for arm, spec in cfg.arms.items() if arm in picked},
            baseline_arms=[arm for arm in cfg.baseline_arms if arm in picked],
            also_compare_to=[arm for arm in cfg.also_compare_to if arm in picked],
            continue_best=dataclasses.replace(cfg.continue_best, picked=picked),
        )
    except ValueError as err:  # e.g. a recorded pick naming an arm this study lacks
        raise SemoreError(f"continue_best: {err}") from None
