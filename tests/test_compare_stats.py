"""Study statistics on synthetic scores and curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compare import stats


def test_iqm_drops_a_quarter_at_each_end_like_rliable():
    assert stats.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    # 5 runs: int(1.25) = 1 dropped at each end, the outliers do not move it
    assert stats.iqm(np.array([[-100.0], [1.0], [2.0], [3.0], [100.0]])) == pytest.approx(2.0)
    assert stats.iqm(np.array([4.0])) == 4.0


def test_bootstrap_interval_of_constant_scores_is_the_constant():
    assert stats.stratified_bootstrap_ci(np.full((6, 1), 0.3)) == pytest.approx((0.3, 0.3))


def test_bootstrap_interval_covers_the_true_iqm_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 0.1, (5, 1))
    large = rng.normal(0.5, 0.1, (200, 1))
    low_s, high_s = stats.stratified_bootstrap_ci(small)
    low_l, high_l = stats.stratified_bootstrap_ci(large)
    assert low_l <= 0.5 <= high_l
    assert high_l - low_l < high_s - low_s


def test_bootstrap_is_stratified_by_task():
    # Task columns with very different levels: resampling within a column keeps one score of
    # each task in every resample, so the mean over tasks is fixed when runs agree per task.
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert stats.stratified_bootstrap_ci(scores, stats.mean) == pytest.approx((0.5, 0.5))


def test_performance_profile_and_steps_to_reach():
    profile = stats.performance_profile(np.array([0.1, 0.4, 0.9, 1.2]), np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(profile, [1.0, 0.5, 0.25])
    steps = np.array([0, 1000, 2000, 3000])
    curve = np.array([0.0, 0.2, 0.6, 0.9])  # known linear-ish curve
    assert stats.steps_to_reach(steps, curve, 0.5) == 2000
    assert stats.steps_to_reach(steps, curve, 0.95) is None
    # A lucky untrained agent at step 0 does not count as reaching the target by learning.
    lucky = np.array([0.56, 0.1, 0.6, 0.9])
    assert stats.steps_to_reach(steps, lucky, 0.5) == 0
    assert stats.steps_to_reach(steps, lucky, 0.5, after=0) == 2000
    assert stats.intervals_overlap((0.1, 0.3), (0.25, 0.5))
    assert not stats.intervals_overlap((0.1, 0.2), (0.25, 0.5))
