"""One writer per output folder: concurrent writers, stale locks, temporary files of live writers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.collect import run as collect_mod
from pipeline.collect.run import main as collect_main
from pipeline.errors import SemoreError
from pipeline.lock import FolderLock, Holder, lock_name, process_start_ticks
from pipeline.pretrain.run import main as pretrain_main
from pipeline.share.run import main as push_main
from tests.conftest import dead_pid
from tests.synthetic_ann import write_synthetic_ann
from tests.test_collect import CONFIG as COLLECT_CONFIG
from tests.test_collect import FakeEnv
from tests.test_collect import run as collect_run

ROOT = Path(__file__).resolve().parents[1]
# A real semore-collect whose simulator steps slowly (the fake one of test_collect), so a
# second writer can start while the first one writes a shard.
# With a go-file, its first step waits until the file exists.
SLOW_COLLECT = """
import sys, time
from pathlib import Path
from pipeline.collect import run as collect
from tests.test_collect import FakeEnv

step_s, go = float(sys.argv[1]), sys.argv[2]

class SlowEnv(FakeEnv):
    def step(self, action):
        while go and not Path(go).exists():
            time.sleep(0.01)
        time.sleep(step_s)
        return super().step(action)

collect.make_env = lambda *args, **kwargs: SlowEnv()
sys.exit(collect.main(sys.argv[3:]))
"""
# Takes a lock, says so, and holds it until killed.
HOLDER = """
import sys, time
from pipeline.lock import FolderLock
FolderLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(120)
"""
# Waits for a start signal (a file), then tries to take a lock: "won" or the error line.
TAKER = """
import sys, time
from pathlib import Path
from pipeline.errors import SemoreError
from pipeline.lock import FolderLock
start = Path(sys.argv[2])
print("ready", flush=True)
while not start.exists():
    time.sleep(0.001)
try:
    FolderLock(sys.argv[1], "collect").acquire()
    print("won", flush=True)
    time.sleep(3.0)  # still holding while the others try
except SemoreError as err:
    print("refused", err, flush=True)
"""


def collect_argv(out: Path, *extra: str) -> list[str]:
    return ["--config", str(COLLECT_CONFIG), "--out", str(out), "--quiet",
            "--episodes_per_shard", "2", "--policy.perturb_expert", "false", *extra]  # fmt: skip


def slow_collect(out: Path, step_s: float, *extra: str, go: Path | str = "") -> subprocess.Popen:
    command = [sys.executable, "-c", SLOW_COLLECT, str(step_s), str(go), *collect_argv(out, *extra)]
    return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def hold(folder: Path, stage: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), stage],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def fake_sim(monkeypatch):
    """semore-collect in this process records from test_collect's fake simulator."""

    def install(interrupt_at: int | None = None) -> None:
        monkeypatch.setattr(collect_mod, "make_env", lambda *a, **k: FakeEnv(interrupt_at))

    return install


def write_lock(folder: Path, stage: str = "collect", **fields) -> Path:
    """A lock file as a holder would have written it; ``fields`` override the holder's."""
    record = {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
              "start_ticks": process_start_ticks(os.getpid()), "since": "2026-01-01T00:00:00+00:00",
              "command": "semore-collect", "worker_index": 0, "num_workers": 1, "token": "t"}  # fmt: skip
    record.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock_name(stage, record["worker_index"], record["num_workers"])
    path.write_text(json.dumps(record))
    return path


def test_a_second_collect_on_the_same_out_refuses_and_the_first_finishes(tmp_path, capsys):
    out = tmp_path / "d"
    first = slow_collect(out, 0.05, "--episodes", "4")
    wait_for(lambda: list((out / "raw").glob(".raw-*.tmp-*")), "the first writer's shard")
    assert collect_main(collect_argv(out, "--episodes", "4")) == 2
    line = error_line(capsys)
    assert f"pid {first.pid} on {socket.gethostname()} since 20" in line
    assert "is being written by semore-collect" in line and "Traceback" not in line
    # the refused writer removed nothing: the first one finishes every shard it started
    assert first.wait(timeout=60) == 0, first.stderr.read()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["raw"]["totals"]["num_episodes"] == 4
    assert not list(out.glob(".semore-collect*.lock"))  # released on exit


def test_two_worker_slices_write_side_by_side(tmp_path):
    out, go = tmp_path / "d", tmp_path / "go"
    slices = [
        slow_collect(
            out, 0, "--episodes", "8", "--worker-index", str(i), "--num-workers", "2", go=go
        )
        for i in range(2)
    ]
    # both hold their slice's lock at once, then record
    wait_for(lambda: len(list(out.glob(".semore-collect-*-of-2.lock"))) == 2, "both slices' locks")
    go.touch()
    for proc in slices:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["raw"]["shards"]) == [f"raw-00000{i}.tar" for i in range(4)]
    assert manifest["raw"]["totals"]["num_episodes"] == 8
    assert not list(out.glob(".semore-*.lock"))


def test_a_slice_and_the_whole_folder_exclude_each_other(tmp_path, capsys):
    out = tmp_path / "d"
    holder = hold(out, "collect")  # the whole folder
    try:
        args = collect_argv(out, "--episodes", "4", "--worker-index", "1", "--num-workers", "2")
        assert collect_main(args) == 2
        assert f"pid {holder.pid}" in error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(out, "collect", 1, 2)
    with lock:  # another split of the folder overlaps too, the same split's other slice not
        with pytest.raises(SemoreError, match="slice 1 of 2"):
            FolderLock(out, "collect", 0, 3).acquire()
        with FolderLock(out, "collect", 0, 2), FolderLock(out, "annotate"):
            pass


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path, fake_sim, capsys):
    fake_sim()
    out = tmp_path / "d"
    stale = write_lock(out, pid=dead_pid())
    assert collect_run(out, "--episodes", "2") == 0
    assert "no longer running" in capsys.readouterr().err
    assert not stale.exists()  # released after the run
    assert json.loads((out / "manifest.json").read_text())["raw"]["totals"]["num_episodes"] == 2


def test_a_lock_whose_pid_was_reused_is_taken_over(tmp_path, fake_sim):
    fake_sim()
    out = tmp_path / "d"
    # this pid runs (it is the test), but started at another time than the lock says
    write_lock(out, start_ticks=process_start_ticks(os.getpid()) - 1)
    assert collect_run(out, "--episodes", "2") == 0


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path, fake_sim, capsys):
    fake_sim()
    out = tmp_path / "d"
    path = write_lock(out, host="node-that-is-not-here", pid=dead_pid())
    assert collect_run(out, "--episodes", "2") == 2
    line = error_line(capsys)
    assert "node-that-is-not-here" in line and f"delete {path}" in line
    assert path.exists() and not (out / "manifest.json").exists()


def test_racing_takers_of_a_stale_lock_one_wins(tmp_path):
    folder = tmp_path / "d"
    write_lock(folder, pid=dead_pid())
    start = tmp_path / "start"
    takers = [
        subprocess.Popen([sys.executable, "-c", TAKER, str(folder), str(start)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    assert all(proc.stdout.readline().strip() == "ready" for proc in takers)
    start.touch()
    results = [proc.communicate(timeout=60)[0].strip() for proc in takers]
    assert sum(r == "won" for r in results) == 1, results
    assert all(r == "won" or "is being written by semore-collect" in r for r in results)


def test_a_live_writers_temporary_shard_survives_a_rerun(tmp_path, fake_sim):
    fake_sim()
    out = tmp_path / "d"
    assert collect_run(out, "--episodes", "2", "--episodes_per_shard", "2") == 0
    raw = out / "raw"
    (raw / "raw-000000.tar").unlink()  # to be recorded again by the rerun
    worker = subprocess.Popen(["sleep", "60"])  # e.g. a simulator worker of a killed parent
    try:
        live = raw / f".raw-000000.tar.tmp-{worker.pid}"
        dead = raw / f".raw-000000.tar.tmp-{dead_pid()}"
        live.write_bytes(b"being written")
        dead.write_bytes(b"left by a killed run")
        assert collect_run(out, "--episodes", "2", "--episodes_per_shard", "2") == 0
        assert live.read_bytes() == b"being written" and not dead.exists()
        assert (raw / "raw-000000.tar").is_file()
    finally:
        worker.kill()
        worker.wait()


def test_the_lock_is_released_on_errors_and_ctrl_c(tmp_path, fake_sim, capsys):
    out = tmp_path / "d"
    fake_sim(interrupt_at=3)
    assert collect_run(out, "--episodes", "2") == 130
    assert not list(out.glob(".semore-collect*.lock"))
    capsys.readouterr()  # the interrupted run's progress bar
    assert collect_run(out, "--episodes", "2", "--seed", "7") == 2  # another config: an error
    assert "another config" in error_line(capsys)
    assert not list(out.glob(".semore-collect*.lock"))


@pytest.mark.parametrize(
    ("stage", "argv"),
    [
        ("pretrain", ["--config", "quickstart", "--data", "DATA"]),
        ("finetune", ["--config", "quickstart", "--encoder", "none"]),
        ("compare", ["--config", "quick", "--pretrained", "encoder.pt"]),
        ("run", ["--config", "quickstart"]),
    ],
)
def test_every_stage_refuses_an_out_another_writer_holds(tmp_path, capsys, stage, argv):
    from pipeline.compare.run import main as compare_main
    from pipeline.finetune.run import main as finetune_main
    from pipeline.run_all import main as run_main

    main = {"pretrain": pretrain_main, "finetune": finetune_main, "compare": compare_main,
            "run": run_main}[stage]  # fmt: skip
    out = tmp_path / "out"
    holder = hold(out, stage)
    try:
        assert main([*argv, "--out", str(out)]) == 2
        line = error_line(capsys)
        assert f"{out} is being written by semore-{stage} pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in out.iterdir()] == [lock_name(stage)]  # the holder's, nothing else


def test_push_to_a_local_folder_refuses_one_another_push_writes(raw_dataset, tmp_path, capsys):
    write_synthetic_ann(raw_dataset, embedding_dim=8)
    out = tmp_path / "export"
    holder = hold(out, "push")
    try:
        args = ["--data", str(raw_dataset), "--repo-id", "semore/syn-test-v1", "--local-dir"]
        assert push_main([*args, str(out)]) == 2
        assert f"is being written by semore-push pid {holder.pid}" in error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "manifest.json").exists()
    assert push_main([*args, str(out)]) == 0  # its lock was left by a killed process
    assert (out / "manifest.json").is_file() and not list(out.glob(".semore-*"))


def test_holder_slices_overlap_only_within_one_split():
    holder = Holder("collect", 1, "h", None, "now", "c", worker_index=1, num_workers=4, token="t")
    assert holder.overlaps(1, 4) and not holder.overlaps(2, 4)
    assert holder.overlaps(0, 2) and holder.overlaps(0, 1)
    assert lock_name("collect") == ".semore-collect.lock"
    assert lock_name("annotate", 2, 3) == ".semore-annotate-2-of-3.lock"
