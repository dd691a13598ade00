"""Multi-positive InfoNCE and the combined pretraining loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semore.encoder import SemoreEncoder
from semore.heads import SemorePretrainModel
from semore.losses import MultiPositiveInfoNCE, SemorePretrainLoss


def unit(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=gen), dim=-1)


def test_matched_pairs_have_lower_loss_than_shuffled():
    text = unit(16, 32)
    image = F.normalize(text + 0.1 * unit(16, 32, seed=1), dim=-1)
    nce = MultiPositiveInfoNCE(temperature=0.1)
    matched = nce(image, text)
    shuffled = nce(image[torch.randperm(16, generator=torch.Generator().manual_seed(2))], text)
    assert matched["loss"] < shuffled["loss"]
    assert matched["acc"] == 1.0
    assert shuffled["acc"] < 0.5


def test_duplicate_captions_are_all_positives():
    text = unit(8, 32)
    text[5] = text[2]  # rows 2 and 5 share a caption
    text[7] = text[2]  # ... and so does row 7
    image = text.clone()  # a perfect encoder: each image sits on its caption
    nce = MultiPositiveInfoNCE(temperature=0.01, learnable_temperature=False)
    out = nce(image, text)
    assert out["loss"] < 1e-3  # at its minimum (0: the loss is reported as a KL)
    assert out["acc"] == 1.0

    # The naive single-positive loss punishes the duplicates as false negatives.
    logits = image @ text.T / 0.01
    labels = torch.arange(8)
    naive = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    # 3 of 8 rows have 3 equally likely "right" answers: log(3) each.
    assert naive == pytest.approx(3 / 8 * math.log(3), rel=1e-3)
    assert naive > out["loss"] + 0.4


def test_temperature_is_learnable_or_fixed():
    learnable = MultiPositiveInfoNCE(temperature=0.07)
    fixed = MultiPositiveInfoNCE(temperature=0.07, learnable_temperature=False)
    assert [p for p in learnable.parameters()] and not list(fixed.parameters())
    assert learnable.temperature == pytest.approx(0.07)
    text, image = unit(6, 8), unit(6, 8, seed=3).requires_grad_()
    learnable(image, text)["loss"].backward()
    assert learnable.log_logit_scale.grad is not None


def make_model(streams: str = "both") -> SemorePretrainModel:
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 32, num_filters=8, repr_dim=16, streams=streams)
    return SemorePretrainModel(encoder, text_dim=24, motion_dim=3, action_dim=2, hidden_dim=32)


def make_batch(batch_size: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "obs": torch.randint(0, 256, (batch_size, 9, 32, 32), generator=gen).to(torch.uint8),
        "emb_sem": unit(batch_size, 24, seed=4),
        "emb_mot": unit(batch_size, 24, seed=5),
        "motion": torch.randn(batch_size, 3, generator=gen),
        "reward": torch.randn(batch_size, generator=gen),
        "action": torch.rand(batch_size, 2, generator=gen) * 2 - 1,
    }


def test_model_output_shapes():
    model = make_model()
    batch = make_batch()
    out = model(batch["obs"], batch["action"])
    assert out["sem_proj"].shape == out["mot_proj"].shape == (6, 24)
    torch.testing.assert_close(out["sem_proj"].norm(dim=-1), torch.ones(6))
    assert out["motion_pred"].shape == (6, 3)
    assert out["reward_pred"].shape == (6,)

    semantic_only = make_model("semantic")
    out = semantic_only(batch["obs"], batch["action"])
    assert "mot_proj" not in out and "z_mot" not in out
    assert out["motion_pred"].shape == (6, 3)  # read from h instead


def test_pretrain_loss_terms_and_weighted_total():
    model, batch = make_model(), make_batch()
    weights = {
        "sem_weight": 1.0,
        "mot_weight": 0.5,
        "motion_reg_weight": 2.0,
        "reward_weight": 0.25,
    }
    losses = SemorePretrainLoss(**weights)(model(batch["obs"], batch["action"]), batch)
    assert set(losses) == {
        "loss",
        "sem_nce",
        "mot_nce",
        "motion_reg",
        "reward_mse",
        "sem_acc",
        "mot_acc",
    }
    expected = (
        1.0 * losses["sem_nce"]
        + 0.5 * losses["mot_nce"]
        + 2.0 * losses["motion_reg"]
        + 0.25 * losses["reward_mse"]
    )
    torch.testing.assert_close(losses["loss"], expected)
    assert not losses["sem_acc"].requires_grad
    for name in ("sem_nce", "mot_nce", "motion_reg", "reward_mse"):
        assert losses[name].ndim == 0 and torch.isfinite(losses[name])


def test_zero_weight_and_missing_outputs_remove_terms():
    model, batch = make_model(), make_batch()
    outputs = model(batch["obs"], batch["action"])
    losses = SemorePretrainLoss(mot_weight=0.0, reward_weight=0.0)(outputs, batch)
    assert "mot_nce" not in losses and "mot_acc" not in losses and "reward_mse" not in losses
    torch.testing.assert_close(losses["loss"], losses["sem_nce"] + losses["motion_reg"])

    motion_only = make_model("motion")
    losses = SemorePretrainLoss()(motion_only(batch["obs"], batch["action"]), batch)
    assert "sem_nce" not in losses and "mot_nce" in losses

    with pytest.raises(ValueError, match="emb_mot"):
        SemorePretrainLoss()(outputs, {k: v for k, v in batch.items() if k != "emb_mot"})


def test_gradients_flow_to_encoder_and_heads():
    model, batch = make_model(), make_batch()
    loss_fn = SemorePretrainLoss()
    loss_fn(model(batch["obs"], batch["action"]), batch)["loss"].backward()
    encoder = model.encoder
    for param in (
        encoder.sem_trunk[0].weight,
        encoder.mot_trunk[0].weight,
        encoder.fuse[0].weight,
        model.sem_proj[0].weight,
        model.reward_head[0].weight,
        loss_fn.sem_nce.log_logit_scale,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    model, batch = make_model(), make_batch()
    loss_fn = SemorePretrainLoss()
    params = list(model.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    first = None
    for _ in range(30):
        loss = loss_fn(model(batch["obs"], batch["action"]), batch)["loss"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_duplicates_detected_under_bf16_autocast():
    text = unit(4, 16)
    text[3] = text[1]
    nce = MultiPositiveInfoNCE(temperature=0.01, learnable_temperature=False)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = nce(text.clone(), text)
    assert out["acc"] == 1.0
    assert out["loss"] < 0.05
