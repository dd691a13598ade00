"""Stage 1: shards, manifest, resume, worker slices and bad input of ``semore-collect``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.collect import run as collect_mod
from pipeline.collect.run import main
from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.data.shards import iter_shard
from pipeline.sim.base import StepResult
from tests.conftest import dead_pid

CONFIG = (
    Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "collect" / "quickstart.yaml"
)


class FakeEnv:
    """A deterministic stand-in simulator: episode length and values follow the seed."""

    action_dim = 2
    camera_names = ["rgb"]
    image_shape = (8, 8)
    step_duration_s = 0.2

    def __init__(self, interrupt_at: int | None = None):
        self.interrupt_at = interrupt_at
        self.total_steps = 0

    def reset(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.length = 3 + seed % 4
        self.t = 0
        return self._frames(), self._state()

    def _frames(self):
        return {"rgb": np.full((8, 8, 3), self.rng.integers(0, 255), dtype=np.uint8)}

    def _state(self):
        return {"speed_mps": float(self.t), "collision": False}

    def step(self, action):
        self.total_steps += 1
        if self.interrupt_at is not None and self.total_steps == self.interrupt_at:
            raise KeyboardInterrupt
        applied = np.zeros(2, np.float32) if action is None else np.asarray(action, np.float32)
        self.t += 1
        terminated = self.t == self.length and self.length == 6
        truncated = self.t == self.length and not terminated
        return StepResult(self._frames(), applied, 1.0, terminated, truncated, self._state(), 2.0)

    def reconnect(self):
        pass

    def close(self):
        pass


@pytest.fixture
def fake_env(monkeypatch):
    envs = []

    def factory(interrupt_at=None):
        def make(*args, **kwargs):
            envs.append(FakeEnv(interrupt_at))
            return envs[-1]

        monkeypatch.setattr(collect_mod, "make_env", make)
        return envs

    return factory


def run(out: Path, *extra: str) -> int:
    """semore-collect on the quickstart preset, with 4 episodes per shard unless overridden."""
    # The fake simulator has no expert to perturb (the quickstart's mixed expert is perturbed).
    argv = ["--config", str(CONFIG), "--out", str(out), "--quiet", "--episodes_per_shard", "4",
            "--policy.perturb_expert", "false"]  # fmt: skip
    return main([*argv, *extra])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "raw").glob("*.tar"))}


def test_shards_roundtrip_and_episode_flags(tmp_path, fake_env):
    fake_env()
    out = tmp_path / "d"
    assert run(out, "--episodes", "5") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    raw = manifest["raw"]
    assert manifest["format_version"] == schema.FORMAT_VERSION
    assert sorted(raw["shards"]) == ["raw-000000.tar", "raw-000001.tar"]
    assert raw["shards"]["raw-000001.tar"]["episodes"] == [4]
    assert raw["totals"]["num_episodes"] == 5
    urls = [str(p) for p in sorted((out / "raw").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == raw["totals"]["num_samples"]
    by_episode: dict[int, list[dict]] = {}
    for sample in samples:
        key = schema.parse_key(sample["__key__"])
        by_episode.setdefault(key.episode, []).append(sample)
        assert sample["rgb.png"].shape == (8, 8, 3)
        assert sample["action.npy"].dtype == np.float32
    assert sorted(by_episode) == [0, 1, 2, 3, 4]
    for steps in by_episode.values():
        flags = [s["step.json"] for s in steps]
        assert [f["step"] for f in flags] == list(range(len(steps)))
        assert flags[0]["is_first"] and not any(f["is_first"] for f in flags[1:])
        assert flags[-1]["is_last"] and not any(f["is_last"] for f in flags[:-1])
        assert flags[-1]["is_terminal"] != flags[-1]["truncated"]
        assert flags[-1]["is_terminal"] == (len(steps) == 6)
    # the same folder through Hugging Face datasets' webdataset builder
    import datasets

    hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert len(hf) == len(samples)
    assert hf[0]["__key__"] == samples[0]["__key__"]


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, fake_env):
    fake_env()
    assert run(tmp_path / "full", "--episodes", "8") == 0
    # interrupted in the middle of the second shard: the first shard stays, no partial one
    fake_env(interrupt_at=25)
    assert run(tmp_path / "cut", "--episodes", "8") == 130
    assert list(shard_bytes(tmp_path / "cut")) == ["raw-000000.tar"]
    assert not list((tmp_path / "cut" / "raw").glob(".*"))
    fake_env()
    assert run(tmp_path / "cut", "--episodes", "8") == 0
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "full")


def test_rerun_adds_nothing_and_more_episodes_extend(tmp_path, fake_env):
    envs = fake_env()
    out = tmp_path / "d"
    assert run(out, "--episodes", "6") == 0
    before = shard_bytes(out)
    assert run(out, "--episodes", "6") == 0
    assert run(out, "--episodes", "3") == 0
    assert shard_bytes(out) == before
    assert len(envs) == 1  # the reruns did not even start a simulator
    assert run(out, "--episodes", "9") == 0
    manifest = json.loads((out / "manifest.json").read_text())["raw"]
    assert [manifest["shards"][n]["episodes"] for n in sorted(manifest["shards"])] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8],
    ]
    assert shard_bytes(out)["raw-000000.tar"] == before["raw-000000.tar"]
    keys = [s["__key__"] for s in iter_shard(out / "raw" / "raw-000001.tar", decode=False)]
    assert len(keys) == len(set(keys))
    assert run(tmp_path / "ref", "--episodes", "9") == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")


def test_shard_renamed_before_manifest_update_is_adopted(tmp_path, fake_env):
    fake_env()
    out = tmp_path / "d"
    assert run(out, "--episodes", "4") == 0
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    info = manifest["raw"]["shards"].pop("raw-000000.tar")
    manifest["raw"]["totals"] = mf.totals(manifest["raw"]["shards"])  # as record_shard left it
    manifest_path.write_text(json.dumps(manifest))
    assert run(out, "--episodes", "4") == 0
    adopted = json.loads(manifest_path.read_text())["raw"]["shards"]["raw-000000.tar"]
    assert adopted == info


def test_entry_that_differs_from_its_shard_is_rebuilt_from_the_shard(tmp_path, fake_env):
    """A run killed between renaming a rewritten shard and recording it: the complete shard
    on disk is the truth, and its entry is rebuilt from it before anything else is written."""
    fake_env()
    out = tmp_path / "d"
    assert run(out, "--episodes", "4") == 0
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    info = dict(manifest["raw"]["shards"]["raw-000000.tar"])
    manifest["raw"]["shards"]["raw-000000.tar"].update(num_samples=3, num_episodes=1, episodes=[0])
    manifest["raw"]["totals"] = mf.totals(manifest["raw"]["shards"])
    manifest_path.write_text(json.dumps(manifest))
    before = shard_bytes(out)
    assert run(out, "--episodes", "4") == 0
    assert json.loads(manifest_path.read_text())["raw"]["shards"]["raw-000000.tar"] == info
    assert shard_bytes(out) == before  # nothing recorded again


def test_worker_slices_are_disjoint_and_cover_all(tmp_path, fake_env):
    fake_env()
    out = tmp_path / "d"
    assert run(out, "--episodes", "12", "--worker-index", "1", "--num-workers", "2") == 0
    assert sorted(shard_bytes(out)) == ["raw-000001.tar"]
    assert run(out, "--episodes", "12", "--worker-index", "0", "--num-workers", "2") == 0
    assert sorted(shard_bytes(out)) == ["raw-000000.tar", "raw-000001.tar", "raw-000002.tar"]
    episodes = json.loads((out / "manifest.json").read_text())["raw"]["totals"]["num_episodes"]
    assert episodes == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "nope"], "invalid choice"),
        (["--policy", "nope"], "invalid choice"),
        (["--episodes", "0"], "0 is not an int in [1, 1e6]"),
        (["--episodes", "two"], "'two' is not an int in [1, 1e6]"),
        (["--episodes", str(10**29)], "1e+29 is not an int in [1, 1e6]"),
        (["--num-workers", "101"], "101 is not an int in [1, 100]"),
    ],
)
def test_bad_flags(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path / "d", *args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_config_files(tmp_path, capsys):
    missing = main(["--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "d")])
    assert missing == 2
    assert "none.yaml not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: [unclosed\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and len(err.strip().splitlines()) == 1
    bad.write_text("backend: airsim\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "backend is 'airsim': expected one of 'highway', 'carla'" in capsys.readouterr().err
    bad.write_text("episodez: 3\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "unknown field 'episodez'" in capsys.readouterr().err


def test_unwritable_out_and_foreign_datasets(tmp_path, capsys, fake_env):
    fake_env()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(blocker / "sub") == 2
    assert f"cannot write to {blocker / 'sub'}" in capsys.readouterr().err
    out = tmp_path / "d"
    assert run(out, "--episodes", "2") == 0
    before = shard_bytes(out)
    assert run(out, "--episodes", "2", "--seed", "7") == 2
    assert "recorded with another config" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert run(out, "--episodes", "2") == 2
    err = capsys.readouterr().err
    assert f"format version 99: expected {schema.FORMAT_VERSION}" in err
    assert shard_bytes(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run(other) == 2
    assert "not empty and holds no manifest.json" in capsys.readouterr().err


def test_highway_workers_and_determinism(tmp_path):
    """Real highway-env: 2 worker processes give the same shards as 1."""
    common = ["--episodes", "2", "--episodes_per_shard", "1", "--highway.max_episode_steps", "6"]
    common += ["--highway.image_height", "32", "--highway.image_width", "32"]
    assert run(tmp_path / "one", *common, "--workers", "1") == 0
    assert run(tmp_path / "two", *common, "--workers", "2") == 0
    one, two = shard_bytes(tmp_path / "one"), shard_bytes(tmp_path / "two")
    assert list(one) == ["raw-000000.tar", "raw-000001.tar"]
    assert one == two
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())["raw"]
    assert manifest["camera_names"] == ["rgb"] and manifest["image_height"] == 32
    # real simulator states keep one type per field, so Hugging Face datasets can load them
    import datasets

    urls = [str(p) for p in sorted((tmp_path / "one" / "raw").glob("*.tar"))]
    hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert len(hf) == manifest["totals"]["num_samples"]
    assert hf.features["state.json"]["lead_distance_m"].dtype == "float64"


def test_sigterm_leaves_no_partial_shard(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "pipeline.collect.run", "--config", str(CONFIG), "--out", str(out)]
    cmd += ["--episodes", "40", "--episodes_per_shard", "20", "--highway.image_height", "32"]
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "raw").glob(".raw-*")):
        time.sleep(0.2)
    assert list((out / "raw").glob(".raw-*")), "collector never started a shard"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert not list((out / "raw").glob("*.tar*")) and not list((out / "raw").glob(".*"))
    assert json.loads((out / "manifest.json").read_text())["raw"]["shards"] == {}


def test_a_node_leaves_other_nodes_temporary_shards_alone(tmp_path, fake_env):
    fake_env()
    out = tmp_path / "d"
    raw = out / "raw"
    assert run(out, "--episodes", "4", "--episodes_per_shard", "2") == 0
    # node 1 of 2 is writing block 3 right now; node 0 restarts and must not delete it
    in_flight = raw / f".raw-000003.tar.tmp-{dead_pid()}"
    own_stale = raw / f".raw-000002.tar.tmp-{dead_pid()}"
    in_flight.write_bytes(b"partial")
    own_stale.write_bytes(b"partial")
    args = ["--episodes", "8", "--episodes_per_shard", "2", "--worker-index", "0"]
    assert run(out, *args, "--num-workers", "2") == 0
    assert in_flight.exists() and not own_stale.exists()
