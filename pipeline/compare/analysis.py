"""Every number a study report shows, computed once from its finished runs: IQM curves,
probabilities of improvement over the reference arm, performance profiles (all rliable's),
the steps each arm needs to reach the reference arm's final IQM, the arms' learner settings
and their cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.compare import estimates
from pipeline.compare.config import STRONGEST, CompareConfig
from pipeline.compare.jobs import threads_per_job
from pipeline.compare.learner import LearnerCheck, check_learner
from pipeline.compare.records import RunRecord, score_matrix
from pipeline.errors import SemoreError


@dataclass
class Analysis:
    """Every number a report shows, computed once."""

    steps: np.ndarray  # evaluated steps common to all runs
    scores: dict[str, np.ndarray]  # arm -> (runs, steps)
    curves: dict[str, estimates.Estimate]  # arm -> IQM per step
    report_steps: list[int]  # the table's steps (each an evaluated step)
    improvement: dict[str, estimates.Estimate]  # arm -> P(arm > reference) per report step
    profiles: dict[str, estimates.Estimate]  # arm -> profile over PROFILE_TAUS, final step
    reach: dict[str, float | None]  # arm -> first step after 0 at its reference's final IQM
    learner: LearnerCheck
    cpu_min: dict[str, tuple[float, bool]]  # arm -> (CPU-minutes per run, measured?)
    reference: str  # the arm the others are compared with (the strongest baseline, if asked)
    # Further arms compared against (also_compare_to): arm -> {other arm: P(other > arm)}
    also: dict[str, dict[str, estimates.Estimate]]

    def column(self, step: int) -> int:
        return int(np.flatnonzero(self.steps == step)[0])


def _at_or_before(steps: np.ndarray, wanted: int) -> int:
    eligible = steps[steps <= wanted]
    return int(eligible[-1]) if len(eligible) else int(steps[0])


def _cpu_minutes(cfg: CompareConfig, records: list[RunRecord]) -> dict[str, tuple[float, bool]]:
    """Mean CPU-minutes per run of each arm and whether it is measured: the mean of its runs'
    measured CPU time where any has one (a run whose count was lost to a stop is left out,
    not counted low), else wall time x the threads the local runner gives each run."""
    threads = threads_per_job(cfg.jobs, len(records))
    by_arm: dict[str, list[RunRecord]] = {}
    for rec in records:
        by_arm.setdefault(rec.arm, []).append(rec)
    out = {}
    for arm, runs in by_arm.items():
        measured = [rec.cpu_s for rec in runs if rec.cpu_s is not None]
        seconds = measured or [rec.wall_time_s * threads for rec in runs]
        out[arm] = (float(np.mean(seconds)) / 60, bool(measured))
    return out


def best_arm(arms: list[str], iqm: dict[str, float]) -> str:
    """The arm of ``arms`` with the highest IQM, the first listed on a tie."""
    return max(arms, key=lambda arm: (iqm[arm], -arms.index(arm)))


def strongest(
    cfg: CompareConfig, steps: np.ndarray, scores: dict[str, np.ndarray], step: int
) -> str:
    """The baseline arm with the highest IQM at ``step`` (the first listed on a tie)."""
    column = int(np.flatnonzero(steps == step)[0])
    ran = [arm for arm in cfg.baseline_arms if arm in scores]
    if not ran:
        raise SemoreError(
            f"no baseline arm ({', '.join(cfg.baseline_arms)}) has a finished run: "
            "expected at least one to pick the strongest"
        )
    points = estimates.iqm_points({arm: scores[arm] for arm in ran})
    return best_arm(ran, {arm: float(points[arm][column]) for arm in ran})


def analyse(cfg: CompareConfig, records: list[RunRecord]) -> Analysis:
    """The report's statistics (rliable's, ``cfg.bootstrap_reps`` resamples each)."""
    steps, scores = score_matrix(records)
    report_steps = sorted({_at_or_before(steps, s) for s in cfg.steps_to_report()})
    columns = [int(np.flatnonzero(steps == s)[0]) for s in report_steps]
    reps = cfg.bootstrap_reps
    reference = cfg.reference_arm
    if reference == STRONGEST:
        reference = strongest(cfg, steps, scores, report_steps[-1])
    if reference not in scores:
        raise SemoreError(
            f"reference arm {reference} has no finished run: expected "
            f"at least one (finished: {', '.join(scores)})"
        )
    curves = estimates.iqm_curves(scores, reps)
    target = float(curves[reference].value[-1])
    # After step 0: an untrained actor that happens to steer straight can score ~0.5 before
    # any update (seen in the study), which is luck, not learning.
    reach = {
        arm: estimates.steps_to_reach(steps, curve.value, target, after=0)
        for arm, curve in curves.items()
    }
    also = {
        other: estimates.improvement(scores, other, columns, reps)
        for other in cfg.also_compare_to
        if other in scores and other != reference
    }
    return Analysis(
        steps=steps,
        scores=scores,
        curves=curves,
        report_steps=report_steps,
        improvement=estimates.improvement(scores, reference, columns, reps),
        profiles=estimates.profiles({arm: m[:, -1] for arm, m in scores.items()}, reps),
        reach=reach,
        learner=check_learner(cfg),
        cpu_min=_cpu_minutes(cfg, records),
        reference=reference,
        also=also,
    )
