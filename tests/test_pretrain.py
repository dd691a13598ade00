"""``semore-pretrain``: tiny in-process runs, checkpoints, logs, export, resume, ablations."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipeline.pretrain.module import SemorePretrainModule
from pipeline.pretrain.run import PretrainConfig, main
from semore.encoder import load_encoder, load_encoder_metadata
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import write_synthetic_ann

CONFIG = (
    Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "pretrain" / "quickstart.yaml"
)
LOSS_TERMS = ("loss", "sem_nce", "mot_nce", "motion_reg", "reward_mse")
# Tiny and fast: 8 filters, batches of 4, every step logged, validation every 2 steps.
TINY = [
    "--encoder.num_filters", "8", "--encoder.num_heads", "2", "--data.batch_size", "4",
    "--data.num_workers", "0", "--data.shuffle_buffer", "8", "--trainer.log_every_n_steps", "1",
    "--trainer.val_check_interval", "2", "--trainer.checkpoint_every_n_steps", "2",
    "--trainer.accelerator", "cpu", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def ann_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_synthetic_raw(tmp_path_factory.mktemp("pretrain") / "data")
    return write_synthetic_ann(root, embedding_dim=16)


def run(data: Path, out: Path, max_steps: int, *extra: str) -> int:
    args = ["--config", str(CONFIG), "--data", str(data), "--out", str(out)]
    return main([*args, "--trainer.max_steps", str(max_steps), *TINY, *extra])


def csv_rows(out: Path) -> list[dict]:
    with open(out / "logs" / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_training_writes_checkpoints_logs_and_export(ann_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert run(ann_dataset, out, 2) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file()
    assert list((out / "logs" / "tensorboard").glob("version_0/events.out.tfevents.*"))
    rows = csv_rows(out)
    columns = set(rows[0])
    for prefix in ("train", "val"):
        for term in (*LOSS_TERMS, "sem_acc", "mot_acc"):
            assert f"{prefix}/{term}" in columns
    assert [r["step"] for r in rows if r["train/loss"]] == ["0", "1"]
    assert any(r["val/sem_nce"] for r in rows)

    # The export equals the checkpoint's encoder and carries what consumers need.
    module = SemorePretrainModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    exported = load_encoder(out / "encoder.pt")
    obs = torch.randint(0, 256, (3, 9, 32, 32), dtype=torch.uint8)
    module.eval()
    with torch.no_grad():
        assert torch.equal(exported(obs), module.encoder(obs))
    metadata = load_encoder_metadata(out / "encoder.pt")
    assert metadata["global_step"] == 2
    assert len(metadata["motion_mean"]) == len(metadata["motion_std"]) == 6
    assert metadata["motion_mean"] == pytest.approx(module.hparams.motion_mean)
    assert metadata["dataset"]["manifest_sha256"] and metadata["holdout_every"] == 4
    assert metadata["config"]["encoder"]["num_filters"] == 8


def test_resume_continues_the_global_step(ann_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert run(ann_dataset, out, 2) == 0
    capsys.readouterr()
    assert run(ann_dataset, out, 4) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected --resume" in err
    assert run(ann_dataset, out, 4, "--resume") == 0
    assert load_encoder_metadata(out / "encoder.pt")["global_step"] == 4
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    # one metrics file per run: the resumed steps follow the first invocation's rows
    assert [r["step"] for r in csv_rows(out) if r["train/loss"]] == ["0", "1", "2", "3"]
    assert not (out / "logs" / "csv" / "version_1").exists()


def test_resume_with_another_architecture_is_an_error(ann_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(ann_dataset, out, 1) == 0
    capsys.readouterr()
    assert run(ann_dataset, out, 2, "--resume", "--encoder.repr_dim", "7") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume: encoder.repr_dim is 7" in err


def test_resume_without_checkpoint_is_an_error(ann_dataset: Path, tmp_path: Path, capsys):
    assert run(ann_dataset, tmp_path / "new", 2, "--resume") == 2
    assert "does not exist: expected a run to resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "absent"),
    [
        (["--encoder.streams", "semantic"], {"mot_nce", "mot_acc"}),
        (["--encoder.streams", "motion"], {"sem_nce", "sem_acc"}),
        (["--encoder.interaction", "false", "--loss.reward_weight", "0"], {"reward_mse"}),
        (["--loss.sem_weight", "0", "--aug_pad", "0"], {"sem_nce", "sem_acc"}),
        # the no-language control: the caption state in place of the caption embeddings
        (
            ["--loss.sem_weight", "0", "--loss.mot_weight", "0", "--loss.state_weight", "1"],
            {"sem_nce", "mot_nce", "sem_acc", "mot_acc"},
        ),  # fmt: skip
        (["--loss.heads_read", "streams"], {"state_reg"}),
    ],
)
def test_ablations_run_and_drop_their_terms(ann_dataset, tmp_path, extra, absent):
    out = tmp_path / "run"
    assert run(ann_dataset, out, 1, *extra) == 0
    columns = set(csv_rows(out)[0])
    all_terms = {"sem_nce", "mot_nce", "motion_reg", "reward_mse", "sem_acc", "mot_acc"}
    for term in all_terms:
        assert (f"train/{term}" in columns) == (term not in absent), term
    state_on = "--loss.state_weight" in extra
    assert ("train/state_reg" in columns) == state_on
    encoder = load_encoder(out / "encoder.pt")
    if "--encoder.streams" in extra:
        assert encoder.config.streams == extra[1]
    if "--encoder.interaction" in extra:
        assert encoder.interaction is None


def test_missing_annotations_is_a_one_line_error(tmp_path: Path, capsys):
    raw_only = write_synthetic_raw(tmp_path / "raw_only")
    assert run(raw_only, tmp_path / "run", 2) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("semore-pretrain: error:") and "run semore-annotate first" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_config_value_is_a_one_line_error(ann_dataset: Path, tmp_path: Path, capsys):
    assert run(ann_dataset, tmp_path / "run", 2, "--encoder.streams", "three") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder.streams" in err


def test_quickstart_config_loads():
    from pipeline.config import load_config

    cfg = load_config(PretrainConfig, CONFIG)
    assert cfg.trainer.accelerator == "cpu" and cfg.encoder.streams == "both"


def test_atc_objective_learns_on_frames_alone_and_exports_its_heads(tmp_path: Path):
    """The label-free baseline: anchor vs the stack one step later through a momentum encoder;
    its InfoNCE falls, no caption term is logged, and the export carries ATC's heads tagged."""
    root = write_synthetic_raw(tmp_path / "data", num_episodes=8, steps_per_episode=10)
    data = write_synthetic_ann(root, embedding_dim=16)
    out = tmp_path / "atc"
    steps = 40
    extra = ["--objective", "atc", "--data.batch_size", "16", "--data.holdout_every", "0",
             "--optim.lr", "1e-3", "--aug_pad", "0"]  # fmt: skip
    assert run(data, out, steps, *extra) == 0
    rows = [r for r in csv_rows(out) if r.get("train/atc_nce")]
    assert "train/sem_nce" not in rows[0]
    nce = [float(r["train/atc_nce"]) for r in rows]
    assert len(nce) == steps
    first, last = sum(nce[:5]) / 5, sum(nce[-5:]) / 5
    assert last < 0.7 * first, f"ATC loss {first:.3f} -> {last:.3f}"
    metadata = load_encoder_metadata(out / "encoder.pt")
    assert metadata["config"]["objective"] == "atc"
    heads = torch.load(out / "encoder.pt", weights_only=True)["heads"]
    assert heads["objective"] == "atc" and heads["model"]["temporal_shift"] == 1
    assert any(k.startswith("target_encoder.") for k in heads["state_dict"])
    module = SemorePretrainModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    target = module.model.target_encoder.state_dict()
    online = module.model.encoder.state_dict()
    moved = [k for k in online if not torch.equal(online[k], target[k])]
    assert moved, "the momentum encoder should lag the online encoder"
