"""Every aggregate of a study report, from rliable (Agarwal et al. 2021, "Deep RL at the edge of
the statistical precipice"): IQM with stratified bootstrap intervals, the probability of
improvement of each arm over the reference arm with its interval, and performance profiles
with bands; and one number rliable does not compute, the first step at which an IQM curve
reaches a threshold (sample efficiency read off the curve).

Scores are per arm (runs, tasks, steps) arrays; one task here, so stratification is over that
one column and carries over unchanged to several tasks. Point estimates are rliable's metrics
(``aggregate_iqm``, ``probability_of_improvement``) step by step. The intervals are rliable's
bootstrap (``get_interval_estimates``, ``create_performance_profile``: its stratified
resampling and percentile intervals); the statistic it evaluates on each resample is the same
definition for every step at once in numpy, because scipy's per-call overhead (its nan-policy
wrapper, ~0.1-0.4 ms a call, 93% of the time in a profile) times steps times 50,000 resamples
made a 10-arm report take ~11 minutes. The parity tests check both against rliable's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics

CONFIDENCE = 0.95
# Performance profile thresholds: normalised returns from below random to above the expert.
PROFILE_TAUS = np.linspace(-0.2, 1.2, 57)
# rliable logs one INFO line per arm through absl; a report prints only its own result.
logging.getLogger("absl").setLevel(logging.WARNING)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's stratified bootstraps draw from numpy's global RNG (``np.random.choice``),
    whatever ``random_state`` says: seed it for reproducible intervals, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm_per_step(scores: np.ndarray) -> np.ndarray:
    """``aggregate_iqm`` (scipy's ``trim_mean(x, 0.25)`` over runs and tasks) at each step of
    (runs, tasks, steps): the mean after dropping ``int(0.25 * n)`` scores at each end."""
    pooled = np.sort(scores.reshape(-1, scores.shape[-1]), axis=0)
    cut = int(0.25 * len(pooled))
    return pooled[cut : len(pooled) - cut].mean(axis=0)


def improvement_per_step(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``probability_of_improvement`` (Mann-Whitney U / (n x m): P(X > Y), ties counting half)
    at each step of (runs, tasks=1, steps) arrays."""
    x, y = x.reshape(-1, 1, x.shape[-1]), y.reshape(1, -1, y.shape[-1])
    return ((x > y) + 0.5 * (x == y)).mean(axis=(0, 1))


@dataclass
class Estimate:
    """A point estimate per step and its 95% interval (low, high per step)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def at(self, i: int) -> tuple[float, float, float]:
        return float(self.value[i]), float(self.low[i]), float(self.high[i])


def _estimates(points: dict, intervals: dict) -> dict[str, Estimate]:
    return {k: Estimate(np.atleast_1d(points[k]), *np.atleast_2d(intervals[k])) for k in points}


def _per_column(metric, *arrays: np.ndarray) -> np.ndarray:
    """rliable ``metric`` of (runs, tasks, steps) ``arrays`` at each step."""
    steps = arrays[0].shape[-1]
    return np.array([metric(*(a[..., i] for a in arrays)) for i in range(steps)], dtype=float)


def iqm_points(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """rliable's ``aggregate_iqm`` of each arm's (runs, steps) scores at every step, without
    intervals (the point estimates of :func:`iqm_curves`)."""
    # (runs, steps) -> (runs, tasks=1, steps), the layout rliable's metrics take
    return {arm: _per_column(metrics.aggregate_iqm, m[:, None, :]) for arm, m in scores.items()}


def iqm_curves(scores: dict[str, np.ndarray], reps: int, seed: int = 0) -> dict[str, Estimate]:
    """IQM of each arm's (runs, steps) scores at every step, with stratified bootstrap
    intervals: one bootstrap call per arm, in which rliable's stratified resampling draws the
    runs of every step on its own, as a per-step (marginal) interval needs."""
    data = {arm: m[:, None, :] for arm, m in scores.items()}
    with _seeded(seed):
        _, intervals = rly.get_interval_estimates(
            data, iqm_per_step, reps=reps, confidence_interval_size=CONFIDENCE
        )
    return _estimates(iqm_points(scores), intervals)


def improvement(
    scores: dict[str, np.ndarray], reference: str, columns: list[int], reps: int, seed: int = 0
) -> dict[str, Estimate]:
    """P(arm > reference) at the step ``columns`` of the (runs, steps) scores, for every other
    arm, with intervals from rliable's independent stratified bootstrap of the two arms."""
    ref = scores[reference][:, None, columns]
    pairs = {arm: [m[:, None, columns], ref] for arm, m in scores.items() if arm != reference}
    if not pairs:
        return {}
    with _seeded(seed):
        _, intervals = rly.get_interval_estimates(
            pairs, improvement_per_step, reps=reps, confidence_interval_size=CONFIDENCE
        )
    points = {arm: _per_column(metrics.probability_of_improvement, *p) for arm, p in pairs.items()}
    return _estimates(points, intervals)


def _score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's default profile (``score_distributions``: the fraction of runs above each
    tau), for all taus at once instead of one np.vectorize call per tau."""
    return (scores.reshape(-1, 1) > np.asarray(taus)[None, :]).mean(axis=0)


def profiles(
    final: dict[str, np.ndarray], reps: int, taus: np.ndarray = PROFILE_TAUS, seed: int = 0
) -> dict[str, Estimate]:
    """Performance profiles (fraction of runs above each tau) of each arm's final (runs,)
    scores, with bootstrap bands, through rliable's ``create_performance_profile``."""
    with _seeded(seed):
        points, intervals = rly.create_performance_profile(
            {arm: v.reshape(-1, 1) for arm, v in final.items()},
            taus,
            custom_profile_func=_score_distribution,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    return _estimates(points, intervals)


def steps_to_reach(
    steps: np.ndarray, curve: np.ndarray, threshold: float, after: float | None = None
) -> float | None:
    """The first evaluated step (only steps > ``after``, if given) at which ``curve`` reaches
    ``threshold``, or None."""
    steps, curve = np.asarray(steps), np.asarray(curve)
    hits = np.flatnonzero((curve >= threshold) & (steps > (-np.inf if after is None else after)))
    return float(steps[hits[0]]) if len(hits) else None
