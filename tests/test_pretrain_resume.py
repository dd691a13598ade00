"""``semore-pretrain --resume`` after a kill -9: the run ends as an uninterrupted one, bit for bit.

A child process trains with a callback that SIGKILLs it at a chosen hook and step (a real
kill -9: nothing is flushed or cleaned up); the resumed run must give the same checkpoint
weights and optimiser state, byte-identical ``metrics.csv`` (every validation row, none
twice) and a byte-identical ``encoder.pt`` as a run that was never interrupted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.pretrain.resume import checkpoint_step, keep_metrics_before
from pipeline.pretrain.run import main
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import write_synthetic_ann

CONFIG = (
    Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "pretrain" / "quickstart.yaml"
)
ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 10
THREADS = 1
# 10 episodes x 4 steps, episodes 4 and 9 held out: 32 training samples, 8 batches of 4 per
# epoch. Validation every 2 steps (one batch), checkpoints every 4: step 8 has both and ends
# epoch 0.
FLAGS = [
    "--encoder.num_filters", "8", "--encoder.num_heads", "2", "--data.batch_size", "4",
    "--data.shuffle_buffer", "16", "--data.holdout_every", "5",
    "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
    "--trainer.val_check_interval", "2", "--trainer.checkpoint_every_n_steps", "4",
    "--trainer.accelerator", "cpu", "--trainer.max_steps", str(MAX_STEPS), "--quiet",
]  # fmt: skip

# The child: pretrain with a callback that kills the process at (hook, step). Appended last,
# it runs after the run's own callbacks at the same hook (the checkpoint is written by then).
KILLER = """
import os, signal, sys
import torch
from lightning.pytorch.callbacks import Callback
import pipeline.pretrain.run as run

hook, step = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))

class KillAt(Callback):
    def _at(self, name, trainer):
        if name == hook and trainer.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    def on_train_batch_start(self, trainer, *args):
        self._at("train_batch_start", trainer)
    def on_train_batch_end(self, trainer, *args):
        self._at("train_batch_end", trainer)
    def on_validation_batch_end(self, trainer, *args):
        self._at("validation_batch", trainer)
    def on_train_end(self, trainer, *args):
        self._at("train_end", trainer)

build = run.build_trainer
def build_trainer(*args, **kwargs):
    trainer = build(*args, **kwargs)
    trainer.callbacks.append(KillAt())
    return trainer
run.build_trainer = build_trainer
sys.exit(run.main(sys.argv[4:]))
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of the module with one torch thread, the killed children too: float sums split
    over another number of threads round differently, so only equal counts compare bit for bit
    (and another test may have changed this process's count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_synthetic_raw(
        tmp_path_factory.mktemp("resume") / "data", num_episodes=10, steps_per_episode=4
    )
    return write_synthetic_ann(root, embedding_dim=16)


def argv(data: Path, out: Path, workers: int) -> list[str]:
    return ["--config", str(CONFIG), "--data", str(data), "--out", str(out),
            "--data.num_workers", str(workers), *FLAGS]  # fmt: skip


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted runs, one per loader-worker count (the data order depends on it)."""
    runs = {}

    def get(workers: int) -> Path:
        if workers not in runs:
            out = tmp_path_factory.mktemp(f"reference{workers}") / "run"
            assert main(argv(dataset, out, workers)) == 0
            runs[workers] = out
        return runs[workers]

    return get


def killed_child(data: Path, out: Path, workers: int, hook: str, step: int) -> None:
    command = [sys.executable, "-c", KILLER, hook, str(step), str(THREADS)]
    command += argv(data, out, workers)
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def metrics(out: Path) -> bytes:
    return (out / "logs" / "csv" / "version_0" / "metrics.csv").read_bytes()


def assert_same_run(out: Path, ref: Path) -> None:
    got = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    want = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert got["global_step"] == want["global_step"] == MAX_STEPS
    for name, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    for state_got, state_want in zip(
        got["optimizer_states"][0]["state"].values(),
        want["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        for key in state_want:
            assert torch.equal(state_got[key], state_want[key]), key
    assert metrics(out) == metrics(ref)
    assert (out / "encoder.pt").read_bytes() == (ref / "encoder.pt").read_bytes()
    assert not list((out / "checkpoints").glob(".*"))  # no uncommitted checkpoint is left


def validation_steps(out: Path) -> list[int]:
    lines = metrics(out).decode().splitlines()
    header = lines[0].split(",")
    step, val = header.index("step"), header.index("val/loss")
    return [int(row.split(",")[step]) + 1 for row in lines[1:] if row.split(",")[val]]


@pytest.mark.parametrize(
    ("hook", "step", "resumed_from", "uncommitted"),
    [
        ("train_batch_end", 6, 4, False),  # mid-epoch, between checkpoints
        ("train_batch_end", 8, 4, True),  # step 8's checkpoint written, its validation not run
        ("validation_batch", 8, 4, True),  # during step 8's validation
        ("train_batch_start", 8, 8, False),  # step 8 committed, epoch 1 not started
        ("train_end", MAX_STEPS, MAX_STEPS, False),  # trained, not exported
    ],
)
def test_kill_then_resume_equals_an_uninterrupted_run(
    dataset, reference, tmp_path, hook, step, resumed_from, uncommitted
):
    out = tmp_path / "run"
    killed_child(dataset, out, 0, hook, step)
    assert checkpoint_step(out / "checkpoints" / "last.ckpt") == resumed_from
    pending = list((out / "checkpoints").glob(".last.ckpt.pending-*"))
    assert len(pending) == uncommitted  # step 8's checkpoint, written but not last.ckpt
    assert not (out / "encoder.pt").exists()
    assert main(argv(dataset, out, 0) + ["--resume"]) == 0
    ref = reference(0)
    assert validation_steps(ref) == [2, 4, 6, 8, 10]
    assert_same_run(out, ref)


def test_resume_with_loader_workers_is_exact(dataset, reference, tmp_path):
    out = tmp_path / "run"
    killed_child(dataset, out, 2, "train_batch_end", 7)  # mid-epoch, odd: the streams rotate
    assert main(argv(dataset, out, 2) + ["--resume"]) == 0
    assert_same_run(out, reference(2))


def test_metrics_are_cut_back_to_the_checkpoint_and_a_torn_row_goes(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = "".join(f"0,{step},{step / 10}\r\n" for step in range(6))
    path.write_bytes(b"epoch,step,train/loss\r\n" + rows.encode() + b"0,3")  # a kill mid-row
    keep_metrics_before(path, 4)  # a checkpoint at step 4 holds the rows of steps 0-3
    kept = "".join(f"0,{step},{step / 10}\r\n" for step in range(4))
    assert path.read_bytes() == b"epoch,step,train/loss\r\n" + kept.encode()
    keep_metrics_before(path, 0)  # a new run: no rows
    assert not path.exists()
