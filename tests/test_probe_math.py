"""Ridge probe and R² on known linear / noise / constant targets."""

from __future__ import annotations

import pytest
import torch

from semore.probe import RidgeProbe, r2_score


def data(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def test_recovers_linear_target_on_held_out_rows():
    weights = data(12, 2, seed=1)
    train_x, test_x = data(400, 12, seed=2) * 5 + 3, data(200, 12, seed=3) * 5 + 3
    targets = lambda x: x @ weights + torch.tensor([10.0, -4.0])  # noqa: E731
    probe = RidgeProbe(alpha=1e-3).fit(train_x, targets(train_x))
    r2 = probe.score(test_x, targets(test_x))
    assert r2.shape == (2,)
    assert (r2 > 0.99).all()
    torch.testing.assert_close(probe.predict(test_x), targets(test_x), atol=1e-2, rtol=1e-3)


def test_noise_target_has_r2_near_zero():
    probe = RidgeProbe(alpha=1.0).fit(data(500, 8, seed=4), data(500, 1, seed=5))
    r2 = probe.score(data(500, 8, seed=6), data(500, 1, seed=7))
    assert abs(r2.item()) < 0.05


def test_constant_target_and_constant_feature_are_handled():
    features = data(50, 4, seed=8)
    features[:, 1] = 7.0  # a dead feature must not break the standardisation
    targets = torch.stack([torch.full((50,), 3.0), features[:, 0] * 2], dim=1)
    probe = RidgeProbe(alpha=1e-3).fit(features, targets)
    prediction = probe.predict(features)
    assert torch.isfinite(prediction).all()
    torch.testing.assert_close(prediction[:, 0], torch.full((50,), 3.0))
    r2 = probe.score(features, targets)
    assert r2[0] == 0.0  # constant target: defined as 0
    assert r2[1] > 0.99


def test_r2_score_values():
    y = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert r2_score(y, y).item() == pytest.approx(1.0)
    assert r2_score(y, torch.full_like(y, 2.5)).item() == pytest.approx(0.0)
    assert r2_score(y.squeeze(1), (y * 0 + 10).squeeze(1)).item() < 0
    with pytest.raises(ValueError, match="same"):
        r2_score(y, torch.zeros(3, 1))


def test_ordinary_least_squares_and_errors():
    x = data(100, 3, seed=9)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    assert RidgeProbe(alpha=0.0).fit(x, y).score(x, y).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="before fit"):
        RidgeProbe().predict(x)
    with pytest.raises(ValueError, match="alpha"):
        RidgeProbe(alpha=-1.0)


def test_select_alpha_prefers_shrinkage_on_noise_and_little_on_signal():
    from semore.probe import select_alpha

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(400, 40, generator=gen)
    groups = torch.arange(400) // 20  # 20 "episodes"
    signal = features[:, :3] @ torch.tensor([1.0, -2.0, 0.5])
    noise = torch.randn(400, generator=gen)
    assert select_alpha(features, signal, groups) <= 1.0
    assert select_alpha(features, noise, groups) >= 100.0
    # one group cannot be cross-validated: the middle of the grid is returned
    assert select_alpha(features, signal, torch.zeros(400)) == 10.0


def test_effective_rank_counts_the_used_directions():
    from semore.probe import effective_rank

    g = torch.Generator().manual_seed(0)
    iso = torch.randn(2000, 8, generator=g)
    assert effective_rank(iso) > 7.5  # 8 equal directions
    line = torch.randn(500, 1, generator=g) @ torch.randn(1, 8, generator=g)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)  # float32 input
    assert effective_rank(torch.ones(10, 4)) == 0.0
