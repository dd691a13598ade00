"""Study statistics through rliable, against fixed inputs with known answers and against
rliable's own metrics."""

from __future__ import annotations

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from pipeline.compare import estimates


def test_iqm_of_a_known_array_and_parity_with_rliable():
    curve = estimates.iqm_curves({"a": np.arange(8.0)[:, None]}, reps=200)["a"]
    assert curve.value[0] == pytest.approx(np.mean([2, 3, 4, 5]))
    # 5 runs: int(1.25) = 1 dropped at each end, the outliers do not move it
    outliers = np.array([[-100.0], [1.0], [2.0], [3.0], [100.0]])
    assert estimates.iqm_curves({"a": outliers}, reps=200)["a"].value[0] == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    for runs in (3, 5, 7, 10):
        scores = rng.normal(size=(runs, 1, 4)).round(1)  # ties too
        expected = [metrics.aggregate_iqm(scores[..., i]) for i in range(4)]
        np.testing.assert_allclose(estimates.iqm_per_step(scores), expected)


def test_probability_of_improvement_known_answers_and_parity_with_rliable():
    low = np.array([[0.1, 0.2], [0.2, 0.3], [0.3, 0.1], [0.0, 0.2], [0.2, 0.2]])
    scores = {"ref": low, "better": low + 1.0, "same": low.copy()}
    poi = estimates.improvement(scores, "ref", [0, 1], reps=500)
    assert set(poi) == {"better", "same"}
    np.testing.assert_allclose(poi["better"].value, 1.0)
    np.testing.assert_allclose([poi["better"].low, poi["better"].high], 1.0)
    np.testing.assert_allclose(poi["same"].value, 0.5)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, (5, 1, 3)) / 4, rng.integers(0, 4, (6, 1, 3)) / 4  # many ties
    expected = [metrics.probability_of_improvement(x[..., i], y[..., i]) for i in range(3)]
    np.testing.assert_allclose(estimates.improvement_per_step(x, y), expected)


def test_a_steps_interval_is_a_bootstrap_of_that_steps_runs_alone():
    """iqm_curves' interval at a step comes from resamples of the runs' scores at that step:
    the same runs give the same interval whatever the other steps hold; an increasing affine
    map of the scores maps the interval (the same seeded resamples, a percentile of the IQM);
    and its ends are IQMs of resamples, so they lie within the runs' range."""
    runs = np.array([0.05, 0.2, 0.35, 0.4, 0.6, 0.9, 1.1])
    rng = np.random.default_rng(3)
    one = estimates.iqm_curves({"a": np.stack([runs, rng.normal(size=7)], axis=1)}, reps=2000)
    two = estimates.iqm_curves({"a": np.stack([runs, rng.normal(size=7) + 5], axis=1)}, reps=2000)
    assert one["a"].at(0) == two["a"].at(0)
    mapped = estimates.iqm_curves({"a": (2.0 * runs + 1.0)[:, None]}, reps=2000)["a"]
    plain = estimates.iqm_curves({"a": runs[:, None]}, reps=2000)["a"]
    np.testing.assert_allclose(mapped.at(0), [2.0 * v + 1.0 for v in plain.at(0)])
    value, low, high = plain.at(0)
    assert runs.min() <= low < value < high <= runs.max()


def test_intervals_are_reproducible_narrow_with_runs_and_leave_numpy_alone():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.1, (5, 1)), rng.normal(0.5, 0.1, (200, 1))
    state = np.random.get_state()[1].copy()
    first = estimates.iqm_curves({"s": small, "l": large}, reps=1000)
    again = estimates.iqm_curves({"s": small, "l": large}, reps=1000)
    assert np.array_equal(np.random.get_state()[1], state)
    assert first["s"].low == again["s"].low and first["s"].high == again["s"].high
    assert first["l"].low[0] <= 0.5 <= first["l"].high[0]
    assert first["l"].high - first["l"].low < first["s"].high - first["s"].low
    constant = estimates.iqm_curves({"c": np.full((6, 1), 0.3)}, reps=200)["c"]
    assert constant.at(0) == pytest.approx((0.3, 0.3, 0.3))


def test_performance_profile_with_bands_matches_rliable_default():
    final = np.array([0.1, 0.4, 0.9, 1.2])
    taus = np.array([0.0, 0.5, 1.0])
    profile = estimates.profiles({"a": final}, reps=300, taus=taus)["a"]
    np.testing.assert_allclose(profile.value, [1.0, 0.5, 0.25])
    assert np.all(profile.low <= profile.value) and np.all(profile.value <= profile.high)
    default, _ = rly.create_performance_profile({"a": final[:, None]}, taus, reps=10)
    np.testing.assert_allclose(profile.value, default["a"])


def test_steps_to_reach():
    steps = np.array([0, 1000, 2000, 3000])
    curve = np.array([0.0, 0.2, 0.6, 0.9])
    assert estimates.steps_to_reach(steps, curve, 0.5) == 2000
    assert estimates.steps_to_reach(steps, curve, 0.95) is None
    # A lucky untrained agent at step 0 does not count as reaching the target by learning.
    lucky = np.array([0.56, 0.1, 0.6, 0.9])
    assert estimates.steps_to_reach(steps, lucky, 0.5) == 0
    assert estimates.steps_to_reach(steps, lucky, 0.5, after=0) == 2000
