"""``encoder_mode: guided``: the pretraining terms on guide batches of the pretraining dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data import schema
from pipeline.data.source import DatasetInfo
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.eval import read_metrics
from pipeline.finetune.guide import build_guide, export_stats, guide_batches, token_table
from pipeline.finetune.guide_model import dataset_change
from pipeline.finetune.run import build_agent, main
from pipeline.pretrain.run import main as pretrain_main
from semore.encoder import load_encoder, load_encoder_metadata, load_pretrain_heads
from semore.guide import PretrainGuide
from semore.trunk_cache import h_from_tokens, token_dim
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import write_synthetic_ann
from tests.test_finetune import (
    CONFIG,
    TINY,
    error_line,
    load_ckpt,
    make_export,
    one_thread,  # noqa: F401  (autouse)
)
from tests.test_pretrain import CONFIG as PRETRAIN_CONFIG
from tests.test_pretrain import TINY as PRETRAIN_TINY

GUIDE = ["--guide.batch_size", "4", "--guide.shuffle_buffer", "8", "--guide.every", "1"]
TERMS = ("guide_loss", "guide_sem_nce", "guide_mot_nce", "guide_motion_reg", "guide_reward_mse")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step pretraining export (8 filters, 32x32) of a tiny annotated dataset."""
    root = tmp_path_factory.mktemp("guided")
    data = write_synthetic_ann(write_synthetic_raw(root / "data"), embedding_dim=16)
    out = root / "pretrain"
    args = ["--config", str(PRETRAIN_CONFIG), "--data", str(data), "--out", str(out)]
    assert pretrain_main([*args, "--trainer.max_steps", "2", *PRETRAIN_TINY]) == 0
    return out / "encoder.pt"


def run(export: Path, out: Path, *extra: str) -> int:
    args = [*TINY, "--encoder", str(export), "--out", str(out), "--num-train-steps", "20"]
    return main([*args, *GUIDE, *extra])


def test_export_carries_heads_and_the_dataset_it_was_pretrained_on(pretrained):
    heads = load_pretrain_heads(pretrained)
    assert heads["model"]["text_dim"] == 16 and heads["model"]["heads_read"] == "h"
    assert any(key.startswith("sem_proj.") for key in heads["state_dict"])
    assert not any(key.startswith("encoder.") for key in heads["state_dict"])
    dataset = load_encoder_metadata(pretrained)["dataset"]
    assert Path(dataset["path"]).is_absolute() and (Path(dataset["path"]) / "ann").is_dir()
    assert dataset["manifest_sha256"] and dataset["content_sha256"]
    assert load_encoder(pretrained).config.num_filters == 8  # loads as any export


def _dataset_id(manifest: dict) -> dict:
    return DatasetInfo("data", manifest, 84, 84, 2, 16, ()).dataset_id()


def test_a_rebuilt_dataset_keeps_its_content_hash_and_a_changed_one_does_not():
    """A fresh checkout rebuilds the study's dataset with the same configs under another command
    and git revision: the same data, so the guided regime must not call it changed."""
    made = {"config_hash": "c1", "totals": {"num_samples": 24}}
    first = _dataset_id({"raw": {**made, "command": "a", "git_revision": "r1"}})
    rebuilt = _dataset_id({"raw": {**made, "command": "b", "git_revision": "r2"}})
    other = _dataset_id({"raw": {**made, "command": "a", "git_revision": "r1", "seed": 7}})
    assert rebuilt["manifest_sha256"] != first["manifest_sha256"]
    assert rebuilt["content_sha256"] == first["content_sha256"] != other["content_sha256"]
    assert dataset_change(first, rebuilt) is None
    assert dataset_change(first, other) == "content_sha256 differs"
    # An export made before the content hash: its configs and sample count decide.
    old = {k: v for k, v in first.items() if k != "content_sha256"}
    assert dataset_change(old, other) is None
    grown = _dataset_id({"raw": {**made, "totals": {"num_samples": 30}}})
    assert dataset_change(old, grown) == "num_samples differs"
    assert dataset_change({}, other) is None  # an export that records no dataset


def test_guided_weight_zero_is_finetune_bit_for_bit(pretrained, tmp_path):
    assert run(pretrained, tmp_path / "finetune", "--encoder_mode", "finetune") == 0
    zero = ["--encoder_mode", "guided", "--guide.weight", "0"]
    assert run(pretrained, tmp_path / "zero", *zero) == 0
    a, b = load_ckpt(tmp_path / "finetune"), load_ckpt(tmp_path / "zero")
    assert a["num_updates"] == b["num_updates"] == 5
    assert a["agent"]["agent"].keys() == b["agent"]["agent"].keys()
    assert all(torch.equal(v, b["agent"]["agent"][k]) for k, v in a["agent"]["agent"].items())


def test_guided_run_logs_the_guide_terms_and_resumes(pretrained, tmp_path):
    out = tmp_path / "guided"
    # 5-step episodes: one ends after the first update whatever the policy does (train rows
    # carry the update metrics of the episode's end)
    short = ["--env.highway.max_episode_steps", "5"]
    assert run(pretrained, out, "--encoder_mode", "guided", "--guide.every", "2", *short) == 0
    train = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    for term in TERMS:
        assert any(r.get(term, "") != "" for r in train), term
    ckpt = load_ckpt(out)
    assert int(ckpt["agent"]["agent"]["guide.num_drawn"]) == 3  # updates 0, 2, 4 of 5
    assert "guide" in ckpt["agent"]["optimizers"]
    resume = [*TINY, "--encoder", str(pretrained), "--out", str(out), "--resume",
              *GUIDE, "--encoder_mode", "guided", "--guide.every", "2", *short]  # fmt: skip
    assert main([*resume, "--num-train-steps", "24"]) == 0
    assert int(load_ckpt(out)["agent"]["agent"]["guide.num_drawn"]) == 4  # and update 6 of 7


def tiny_cfg(*extra: str) -> FinetuneConfig:
    overrides = ["--env.highway.image_height", "32", "--env.highway.image_width", "32",
                 "--sac.hidden_dim", "32", "--encoder_mode", "guided", *GUIDE, *extra]  # fmt: skip
    return load_config(FinetuneConfig, str(CONFIG), overrides, stage="finetune")


def test_the_guide_term_falls_over_guided_updates(pretrained):
    torch.manual_seed(0)
    cfg = tiny_cfg("--guide.batch_size", "8")
    metadata = load_encoder_metadata(pretrained)
    agent = build_agent(
        load_encoder(pretrained),
        cfg,
        pretrained=True,
        guide=lambda encoder: build_guide(encoder, cfg, pretrained, metadata),
    )
    assert isinstance(agent.guide, PretrainGuide) and agent.guide.model.encoder is agent.encoder
    g = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.randint(0, 256, (8, 9, 32, 32), generator=g, dtype=torch.uint8),
        "next_obs": torch.randint(0, 256, (8, 9, 32, 32), generator=g, dtype=torch.uint8),
        "action": torch.rand(8, 2, generator=g) * 2 - 1,
        "reward": torch.rand(8, generator=g),
        "discount": torch.full((8,), 0.99),
    }
    losses = [agent.update(batch, step)["guide_loss"] for step in range(40)]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_missing_or_incompatible_guide_dataset_is_a_one_line_error(pretrained, tmp_path, capsys):
    guided = ["--encoder_mode", "guided"]
    missing = tmp_path / "nowhere"
    assert run(pretrained, tmp_path / "a", *guided, "--guide.data", str(missing)) == 2
    line = error_line(capsys)
    assert "guide dataset" in line and str(missing) in line

    other = write_synthetic_ann(write_synthetic_raw(tmp_path / "other"), embedding_dim=8)
    assert run(pretrained, tmp_path / "b", *guided, "--guide.data", str(other)) == 2
    line = error_line(capsys)
    assert "embedding dim 8: expected 16" in line

    bare = tmp_path / "bare.pt"  # an export without heads or a dataset record
    make_export(bare)
    assert run(bare, tmp_path / "c", *guided) == 2
    assert "records no pretraining dataset" in error_line(capsys)


def test_guided_on_cached_tokens_keeps_the_lower_layers(pretrained, tmp_path):
    out = tmp_path / "cached"
    args = ["--encoder_mode", "guided", "--encoder_trainable_from", "projection"]
    assert run(pretrained, out, *args) == 0
    agent = load_ckpt(out)["agent"]["agent"]
    start = load_encoder(pretrained).state_dict()
    for key, value in start.items():
        lower = key.startswith(("sem_trunk.", "mot_trunk.", "interaction."))
        assert torch.equal(agent[f"encoder.{key}"], value) == lower, key


def test_a_frozen_trunk_guides_from_its_tokens_computed_once(pretrained):
    """Guide rows on a frozen trunk are its tokens of the guide dataset's training frames,
    and give the heads what the frames give them (float16 tokens, no shift)."""
    torch.manual_seed(0)
    cfg = tiny_cfg("--encoder_trainable_from", "projection", "--guide.batch_size", "8")
    metadata = load_encoder_metadata(pretrained)
    agent = build_agent(
        load_encoder(pretrained),
        cfg,
        pretrained=True,
        guide=lambda encoder: build_guide(encoder, cfg, pretrained, metadata),
    )
    assert agent.encoder.frozen_below == "projection"
    guide = agent.guide
    batch = next(guide._open(0))
    assert "obs" not in batch and batch["obs_tokens"].dtype == torch.float16
    assert batch["obs_tokens"].shape == (8, token_dim(agent.encoder))
    # The same frames read as pixels: every drawn row is one of them, with its targets.
    data = metadata["dataset"]["path"]
    hw = (32, 32)
    stats = export_stats(metadata, len(schema.CAPTION_STATE_FIELDS))
    frames = next(guide_batches(data, cfg.frame_stack, hw, 4, stats, cfg.guide, seed=0))
    table = token_table(agent.encoder, data, cfg.frame_stack, hw, 4, stats, agent.device)
    for row in range(4):
        match = (table["episode"] == frames["episode"][row]) & (
            table["step"] == frames["step"][row]
        )
        (index,) = torch.nonzero(match)[0]
        with torch.no_grad():
            expected = agent.encoder.encode(frames["obs"][row : row + 1].float())["h"]
            got = h_from_tokens(agent.encoder, table["obs_tokens"][index : index + 1])
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(table["motion"][index], frames["motion"][row])
    # Two streams with the same seed draw the same rows; the guide term falls on them.
    again = next(guide._open(0))
    assert torch.equal(again["obs_tokens"], batch["obs_tokens"])
    replay = {
        "obs_tokens": table["obs_tokens"][:8],
        "next_obs_tokens": table["obs_tokens"][8:16],
        "action": torch.rand(8, 2) * 2 - 1,
        "reward": torch.rand(8),
        "discount": torch.full((8,), 0.99),
    }
    losses = [agent.update(replay, step)["guide_loss"] for step in range(40)]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def _pretrain_variant(root: Path, *extra: str) -> Path:
    data = write_synthetic_ann(write_synthetic_raw(root / "data"), embedding_dim=16)
    out = root / "pretrain"
    args = ["--config", str(PRETRAIN_CONFIG), "--data", str(data), "--out", str(out)]
    assert pretrain_main([*args, "--trainer.max_steps", "2", *PRETRAIN_TINY, *extra]) == 0
    return out / "encoder.pt"


@pytest.mark.parametrize("trainable_from", ["trunk", "projection"])
def test_atc_export_guides_with_its_own_loss_and_momentum_encoder(tmp_path, trainable_from):
    """atc_guided: ATC's contrast stays on during RL (frames, or cached tokens of the online
    and the momentum encoder); the momentum encoder follows only the layers that train."""
    export = _pretrain_variant(tmp_path, "--objective", "atc")
    out = tmp_path / "run"
    args = [
        "--encoder_mode",
        "guided",
        "--encoder_trainable_from",
        trainable_from,
        "--num-train-steps",
        "30",
    ]  # fmt: skip  (a training episode ends after updates)
    assert run(export, out, *args) == 0
    train = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    assert any(r.get("guide_atc_nce", "") != "" for r in train)
    assert not any(r.get("guide_sem_nce", "") for r in train)
    ckpt = load_ckpt(out)
    agent = ckpt["agent"]["agent"]
    saved = load_pretrain_heads(export)["state_dict"]
    assert int(agent["guide.num_drawn"]) == ckpt["num_updates"] > 0  # guide.every 1
    for key, exported in saved.items():
        if not key.startswith("target_encoder."):
            continue
        layer = key.removeprefix("target_encoder.")
        moved = not torch.equal(agent[f"guide.model.{key}"], exported)
        trains = trainable_from == "trunk" or layer.startswith(("sem_out", "mot_out", "fuse"))
        assert moved == trains, key


def test_no_language_export_keeps_its_state_term_when_guided(tmp_path):
    """nolang_guided: the control's own term (state regression, standardised as pretrained)
    stays on during RL, and no caption term is computed."""
    no_language = ["--loss.sem_weight", "0", "--loss.mot_weight", "0", "--loss.state_weight", "1"]
    export = _pretrain_variant(tmp_path, *no_language)
    metadata = load_encoder_metadata(export)
    assert len(metadata["state_std"]) == len(schema.CAPTION_STATE_FIELDS)
    out = tmp_path / "run"
    assert (
        run(export, out, "--encoder_mode", "guided", "--encoder_trainable_from", "projection") == 0
    )
    train = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    state = [float(r["guide_state_reg"]) for r in train if r.get("guide_state_reg", "") != ""]
    assert state and all(value > 0 for value in state)
