"""``--launcher slurm`` without a cluster: submitit's local executor runs the same tasks, a
stand-in ``sbatch`` records the scripts a study submits, and bad set-ups fail on one line."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.annotate.run import main as annotate_main
from pipeline.collect.run import main as collect_main
from pipeline.compare.run import main as compare_main
from pipeline.errors import SemoreError
from pipeline.launch.cli import task_argv
from pipeline.launch.config import LauncherConfig
from pipeline.launch.submit import Stage, Task, launch

pytest.importorskip("submitit", reason="submitit is the cluster extra: pip install -e '.[dev]'")

SMALL_ENV = {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 5}}
COLLECT = ["--config", "quickstart", "--episodes", "4", "--episodes_per_shard", "1",
           "--highway.image_height", "32", "--highway.image_width", "32",
           "--highway.max_episode_steps", "5", "--quiet"]  # fmt: skip
ANNOTATE = ["--config", "quickstart", "--num_threads", "1", "--quiet"]


def make_dataset(out: Path, *launch: str) -> Path:
    """Collect then annotate the tiny dataset into ``out``, with the given launch flags."""
    assert collect_main([*COLLECT, "--out", str(out), *launch]) == 0
    assert annotate_main([*ANNOTATE, "--data", str(out), *launch]) == 0
    return out


def samples(root: Path) -> dict[tuple[str, str, str], dict[str, bytes]]:
    """Every raw + ann member by (run, episode, step): the key without its worker field."""
    found: dict[tuple[str, str, str], dict[str, bytes]] = {}
    for shard in sorted(root.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                run, _worker, episode, step = key.rsplit("_", 3)
                found.setdefault((run, episode, step), {})[ext] = tar.extractfile(member).read()
    return found


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Path:
    """The reference: one local run of both stages, without a launcher."""
    return make_dataset(tmp_path_factory.mktemp("local") / "data")


def test_local_executor_runs_each_slice_as_a_task(local_dataset, tmp_path, capsys):
    flags = ["--launcher", "slurm", "--launcher.cluster", "local", "--num-workers", "2",
             "--launcher.cpus_per_task", "1", "--launcher.poll_s", "0.5"]  # fmt: skip
    out = make_dataset(tmp_path / "data", *flags)
    ours, reference = samples(out), samples(local_dataset)
    assert len(reference) == 20 and ours == reference
    keys = {
        m.name.split(".")[0].split("_")[1]
        for s in (out / "raw").glob("*.tar")
        for m in tarfile.open(s).getmembers()
    }
    assert keys == {"00", "01"}  # each task's samples carry its worker index
    logs = out / "logs"
    assert sorted(p.name for p in logs.glob("*.log")) == [
        "annotate-worker00.log",
        "annotate-worker01.log",
        "collect-worker00.log",
        "collect-worker01.log",
    ]
    assert any((logs / "submitit").glob("*_log.out"))
    capsys.readouterr()
    assert collect_main([*COLLECT, "--out", str(out), *flags]) == 0  # a rerun submits nothing
    assert "nothing to collect" in capsys.readouterr().out


def test_a_failed_task_is_one_line_naming_its_log(tmp_path):
    cfg = LauncherConfig(cluster="local", poll_s=0.2)
    ok = Task("fine", [sys.executable, "-c", "print('hello')"], tmp_path / "fine.log")
    bad = Task("broken", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "broken.log")
    after = Task("after", [sys.executable, "-c", "print('never')"], tmp_path / "after.log")
    stages = [Stage("first", [ok, bad]), Stage("second", [after])]
    with pytest.raises(SemoreError) as err:
        launch(stages, cfg, tmp_path / "submitit")
    assert str(err.value) == f"broken failed (exit 3): see {tmp_path / 'broken.log'}"
    assert (tmp_path / "fine.log").read_text() == "hello\n"
    assert not (tmp_path / "after.log").exists()  # a stage runs only after the one before


def test_task_argv_drops_the_launch_and_slice_flags():
    argv = ["--config", "c.yaml", "--launcher", "slurm", "--wait", "--num-workers=4",
            "--worker-index", "1", "--launcher.partition", "gpu", "--out", "o"]  # fmt: skip
    assert task_argv(argv) == ["--config", "c.yaml", "--launcher.partition", "gpu", "--out", "o"]


def test_bad_launches_are_one_line_errors(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "data")
    assert collect_main([*COLLECT, "--out", out, "--launcher", "slurm", "--worker-index", "1"]) == 2
    assert "--worker-index is set per task" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    assert collect_main([*COLLECT, "--out", out, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs SLURM's sbatch on PATH" in err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    assert collect_main([*COLLECT, "--out", out, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'semore[cluster]'" in err


FAKE_SBATCH = """#!/bin/sh
# Stands in for SLURM's sbatch: keeps the script, answers as sbatch does.
n=$(ls "$FAKE_SLURM" | wc -l)
cp "$1" "$FAKE_SLURM/$((n + 100)).sh"
echo "Submitted batch job $((n + 100))"
"""

TINY_STUDY = {
    "dataset": {"collect_overrides": {"episodes": 2, **SMALL_ENV}},
    "encoders": {"tiny": {"overrides": {"trainer": {"max_steps": 2}}}},
    "arms": {
        "frozen": {"encoder": "encoders.tiny", "overrides": {"encoder_mode": "frozen"}},
        "scratch": {"encoder": "none", "architecture_from": "encoders.tiny"},
    },
    "seeds": [0, 1],
    "num_train_steps": 6,
    "eval_every_steps": 6,
    "num_eval_episodes": 1,
}


def test_a_study_is_submitted_as_dependent_stages(tmp_path, monkeypatch, capsys):
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir(), scripts.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(scripts))
    config, out = tmp_path / "study.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(TINY_STUDY))
    flags = ["--launcher.partition", "cpu", "--launcher.cpus_per_task", "3",
             "--launcher.gpus_per_task", "1", "--launcher.mem_gb", "8",
             "--launcher.array_parallelism", "2", "--launcher.sbatch_flags.qos", "high"]  # fmt: skip
    argv = ["--config", str(config), "--out", str(out), "--launcher", "slurm", *flags]
    assert compare_main(argv) == 0  # submits and returns: nothing runs
    printed = capsys.readouterr().out.splitlines()
    assert printed[:5] == [
        "collect: 1 task(s), job 100",
        "annotate: 1 task(s), job 101",
        "encoders: 1 task(s), job 102",
        "fine-tuning runs: 4 task(s), job 103",
        "report: 1 task(s), job 104",
    ]
    assert printed[5].startswith("follow with: squeue -j 100,101,102,103,104")
    text = {int(p.stem): p.read_text() for p in scripts.glob("*.sh")}
    for flag in ("--partition=cpu", "--cpus-per-task=3", "--gpus-per-node=1", "--mem=8GB",
                 "--time=240", "--qos=high"):  # fmt: skip
        assert all(f"#SBATCH {flag}\n" in t for t in text.values()), flag
    assert "--dependency" not in text[100]
    for job in (101, 102, 103, 104):  # each stage waits for the one before
        assert f"#SBATCH --dependency=afterok:{job - 1}\n" in text[job]
        assert "#SBATCH --kill-on-invalid-dep=yes\n" in text[job]
    assert "#SBATCH --array=0-3%2\n" in text[103] and "--array" not in text[102]
    assert "#SBATCH --job-name=semore-fine-tuning-runs\n" in text[103]
    assert f"#SBATCH --output={out / 'logs' / 'submitit'}/%A_%a_0_log.out\n" in text[103]
