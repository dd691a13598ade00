"""``semore-probe`` / ``run_probe``: linear probes of frozen features on held-out episodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.pretrain.probe import main, run_probe
from semore.encoder import SemoreEncoder, save_encoder
from semore.probe import episode_bootstrap_r2, r2_score
from tests import conftest

FRAME_STACK = 3


def pixel(episode: int, step: int) -> int:
    return (episode * 37 + step * 11) % 256


class LatestFramePixel(nn.Module):
    """A fake encoder: h is linear in the latest frame's red value (plus a constant)."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        red = obs[:, 3 * (FRAME_STACK - 1)].float().mean((1, 2))  # (B,)
        return torch.stack([2.0 * red + 1.0, torch.ones_like(red)], dim=1)  # (B, 2)


@pytest.fixture
def pixel_tied_dataset(tmp_path: Path, monkeypatch) -> Path:
    """Synthetic raw data whose speed and lead distance are linear in the frame's red value."""
    original = conftest.synthetic_state

    def state(episode: int, step: int, dt_s: float) -> dict:
        values = original(episode, step, dt_s)
        values["speed_mps"] = 0.1 * pixel(episode, step)
        values["lead_distance_m"] = 0.3 * pixel(episode, step)
        values["lead_present"] = True
        return values

    module = sys.modules[conftest.write_synthetic_raw.__module__]
    monkeypatch.setattr(module, "synthetic_state", state)
    return conftest.write_synthetic_raw(tmp_path / "data", num_episodes=8, steps_per_episode=6)


def test_run_probe_recovers_linear_targets_on_heldout_episodes(pixel_tied_dataset: Path):
    result = run_probe(
        LatestFramePixel(),
        pixel_tied_dataset,
        frame_stack=FRAME_STACK,
        holdout_every=4,
        batch_size=5,
        alpha=1e-6,
    )
    assert result["heldout_episodes"] == [3, 7]
    assert (result["num_train_samples"], result["num_heldout_samples"]) == (36, 12)
    r2 = result["r2"]
    assert r2["speed"] > 0.999 and r2["lead_distance"] > 0.999
    assert r2["reward"] > 0.999  # the synthetic reward is speed * dt
    for name in ("speed", "lead_distance", "reward"):  # intervals from resampled episodes
        low, high = result["r2_interval"][name]
        assert low <= r2[name] + 1e-9 and r2[name] - 1e-9 <= high and high <= 1.0
    assert set(r2) == {"speed", "lead_distance", "lane", "lateral_offset", "heading", "reward"}


def test_probe_scores_the_latest_frame_not_an_older_one(pixel_tied_dataset: Path):
    class OldestFramePixel(nn.Module):
        def forward(self, obs):
            red = obs[:, 0].float().mean((1, 2))
            return torch.stack([red, torch.ones_like(red)], dim=1)

    def speed(encoder: nn.Module) -> tuple[float, list[float]]:
        result = run_probe(
            encoder, pixel_tied_dataset, frame_stack=FRAME_STACK, holdout_every=4, alpha=1e-6
        )
        return result["r2"]["speed"], result["r2_interval"]["speed"]

    latest, latest_band = speed(LatestFramePixel())
    stale, stale_band = speed(OldestFramePixel())
    assert latest == pytest.approx(1.0, abs=1e-6)
    # Two steps stale, the red value is off by 22 and wraps at 256 at other steps, and the
    # first steps of an episode repeat its first frame: R² 0.90 here, its whole interval below
    # the latest frame's.
    assert stale < 0.95 and stale_band[1] < latest_band[0]


def test_cli_random_encoder_prints_table_and_summary(raw_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "probe.json"
    code = main(
        [
            "--encoder",
            "random",
            "--data",
            str(raw_dataset),
            "--out",
            str(out),
            "--batch-size",
            "7",
            "--quiet",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["target", "R2", "held-out"] and "95% interval" in lines[0]
    summary = lines[-1]
    assert summary.startswith("probe: speed=") and "lead_distance=" in summary
    assert "lane=" in summary and "reward=" in summary
    assert summary.endswith("(held-out episodes: 1, samples: 6)")
    saved = json.loads(out.read_text())
    assert saved["encoder"] == "random" and saved["repr_dim"] == 50
    assert set(saved["r2"]) == {
        "speed",
        "lead_distance",
        "lane",
        "lateral_offset",
        "heading",
        "reward",
    }


def test_cli_uses_the_exports_holdout_rule(raw_dataset: Path, tmp_path: Path, capsys):
    encoder = SemoreEncoder(
        frame_stack=2, image_height=32, image_width=32, num_filters=8, repr_dim=6, num_heads=2
    )
    path = tmp_path / "encoder.pt"
    save_encoder(path, encoder, {"holdout_every": 2})
    assert main(["--encoder", str(path), "--data", str(raw_dataset), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("(held-out episodes: 2, samples: 12)")


def test_cli_errors_are_one_line(raw_dataset: Path, tmp_path: Path, capsys):
    assert main(["--encoder", str(tmp_path / "missing.pt"), "--data", str(raw_dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt" in err
    assert main(["--encoder", "random", "--data", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_lead_distance_target_is_capped_at_the_lead_range(raw_dataset: Path):
    from pipeline.data.schema import LEAD_RANGE_M as LEAD_DISTANCE_CAP_M
    from pipeline.data.source import iter_pairs, shard_urls
    from pipeline.data.windows import iter_windows

    samples = [
        s
        for raw, _ in shard_urls(raw_dataset, with_ann=False)
        for s in iter_windows(iter_pairs(raw, None), FRAME_STACK)
    ]
    for sample in samples:
        state = conftest.synthetic_state(sample["episode"], sample["step"], 0.2)
        expected = state["lead_distance_m"] if state["lead_present"] else LEAD_DISTANCE_CAP_M
        assert sample["lead_distance_m"] == min(expected, LEAD_DISTANCE_CAP_M)
    assert LEAD_DISTANCE_CAP_M == 100.0
    assert any(s["lead_distance_m"] == LEAD_DISTANCE_CAP_M for s in samples)


def test_probe_reads_the_encoder_of_a_fine_tuning_run(tmp_path: Path, raw_dataset: Path):
    from pipeline.finetune.run import main as finetune_main
    from pipeline.pretrain.probe import load_probe_encoder

    run = tmp_path / "ft"
    args = ["--config", "quickstart", "--encoder", "none", "--out", str(run), "--quiet",
            "--env.highway.image_height", "32", "--env.highway.image_width", "32",
            "--env.highway.max_episode_steps", "6", "--num-train-steps", "8",
            "--num_seed_steps", "4", "--batch_size", "4", "--num_eval_episodes", "1",
            "--measure_reference", "false", "--sac.hidden_dim", "8", "--encoder.num_filters", "8"]  # fmt: skip
    assert finetune_main(args) == 0
    encoder, metadata = load_probe_encoder(str(run), raw_dataset, FRAME_STACK)
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, checkpoint["agent"]["agent"][f"encoder.{name}"])
    assert metadata["finetune_step"] == 8 and metadata["encoder_source"] == "none"
    result = run_probe(encoder, raw_dataset, holdout_every=4)
    assert result["repr_dim"] == 50 and set(result["r2_interval"]) == set(result["r2"])


def test_the_bootstrap_resamples_whole_episodes():
    # Half the episodes are predicted exactly, half badly: resampling episodes moves R² far
    # more than resampling rows would (each row its own "episode").
    g = torch.Generator().manual_seed(0)
    target = torch.randn(200, generator=g, dtype=torch.float64)
    episodes = torch.arange(200) // 20
    noise = 2.0 * torch.randn(200, generator=g, dtype=torch.float64)
    predicted = torch.where(episodes < 5, target, target + noise)
    low, high = episode_bootstrap_r2(target, predicted, episodes)
    row_low, row_high = episode_bootstrap_r2(target, predicted, torch.arange(200))
    r2 = float(r2_score(target, predicted)[0])
    assert low < r2 < high and row_low < r2 < row_high
    assert high - low > 1.5 * (row_high - row_low)
    assert episode_bootstrap_r2(target, predicted, episodes) == [low, high]  # seeded
    assert episode_bootstrap_r2(target, target, episodes) == [1.0, 1.0]
    single = episode_bootstrap_r2(target, predicted, torch.zeros(200, dtype=torch.long), reps=20)
    assert single == pytest.approx([r2, r2])


def test_a_fine_tuning_run_with_a_corrupt_checkpoint_is_a_one_line_error(
    raw_dataset: Path, tmp_path: Path, capsys
):
    run = tmp_path / "ft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"half a checkpoint")
    assert main(["--encoder", str(run), "--data", str(raw_dataset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"semore-probe: error: {run}/checkpoints/last.pt is not readable (KeyError): "
        "expected a checkpoint written by semore-finetune"
    ]
    assert main(["--encoder", str(tmp_path / "nothing" / "checkpoints" / "last.pt"),
                 "--data", str(raw_dataset)]) == 2  # fmt: skip
    assert (
        "last.pt not found: expected a semore-finetune run's checkpoint" in capsys.readouterr().err
    )
