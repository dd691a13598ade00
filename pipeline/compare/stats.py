"""Aggregate statistics of RL results, after Agarwal et al. 2021 ("Deep RL at the edge of the
statistical precipice", the rliable library): interquartile mean (IQM) across runs, 95%
stratified bootstrap confidence intervals, performance profiles, and the number of steps an
aggregate curve needs to reach a threshold.

Scores are arrays of shape (runs, tasks); one task here, so stratification is over that one
column, and it generalises unchanged to several tasks. rliable itself is not a dependency: its
bootstrap relies on an ``arch`` release that no longer imports next to current pandas.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores (runs x tasks pooled): the mean after dropping the
    lowest and highest 25% (``int(0.25 * n)`` scores each), as rliable's ``aggregate_iqm``
    (``scipy.stats.trim_mean(scores, 0.25, axis=None)``)."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    cut = int(0.25 * len(values))
    kept = values[cut : len(values) - cut]
    return float(kept.mean()) if len(kept) else float("nan")


def mean(scores: np.ndarray) -> float:
    return float(np.mean(scores))


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over bootstrap resamples of the runs, drawn
    independently within each task (column) of ``scores`` (runs, tasks)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    num_runs, num_tasks = scores.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num_runs, size=(reps, num_runs, num_tasks))  # (reps, runs, tasks)
    resampled = np.take_along_axis(scores[None], idx, axis=1)
    values = np.array([statistic(sample) for sample in resampled])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval_estimate(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """IQM, its 95% stratified bootstrap interval, and the mean of ``scores`` (runs, tasks)."""
    low, high = stratified_bootstrap_ci(scores, iqm, reps=reps, seed=seed)
    return {"iqm": iqm(scores), "iqm_low": low, "iqm_high": high, "mean": mean(scores)}


def performance_profile(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of runs (pooled over tasks) whose score exceeds each threshold."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    return np.array([(values > tau).mean() for tau in np.asarray(thresholds)])


def steps_to_reach(
    steps: np.ndarray, curve: np.ndarray, threshold: float, after: float | None = None
) -> float | None:
    """The first evaluated step (only steps > ``after``, if given) at which ``curve`` reaches
    ``threshold``, or None."""
    steps, curve = np.asarray(steps), np.asarray(curve)
    hits = np.flatnonzero((curve >= threshold) & (steps > (-np.inf if after is None else after)))
    return float(steps[hits[0]]) if len(hits) else None


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
