"""``--launcher slurm`` through a real one-node SLURM started here (tests/slurm/cluster.sh):
the same samples and the same study table as without a launcher.

Without SLURM's daemons these tests skip with one line; in CI (``CI=true``), where .ci/run
installs them, a cluster that does not start fails them instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.compare.run import main as compare_main
from pipeline.errors import SemoreError
from pipeline.launch.config import LauncherConfig
from pipeline.launch.submit import Stage, Task, launch
from tests.test_compare_run import TINY_FINETUNE
from tests.test_launch import make_dataset, samples

CLUSTER_SCRIPT = Path(__file__).parent / "slurm" / "cluster.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue")


def _not_here(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the SLURM tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node cluster of this module's own (own folder and ports), stopped afterwards."""
    if importlib.util.find_spec("submitit") is None:
        _not_here("submitit is not installed (the cluster extra: pip install -e '.[cluster]')")
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        _not_here(
            f"no SLURM here ({', '.join(missing)} not found: apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        _not_here("the one-node SLURM runs its daemons as root, and this is not root")
    folder = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "SEMORE_SLURM_DIR": str(folder),
        "SEMORE_SLURM_CTLD_PORT": str(_free_port()),
        "SEMORE_SLURM_SLURMD_PORT": str(_free_port()),
    }
    started = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    try:
        if started.returncode != 0:
            pytest.fail(
                f"the one-node SLURM did not start: {started.stderr.strip()}", pytrace=False
            )
        conf = str(folder / "slurm.conf")
        hostname = subprocess.run(
            ["srun", "hostname"],
            env={**env, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert hostname.returncode == 0 and hostname.stdout.strip(), hostname.stderr
        cpus = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%c"],
            env={**env, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
        ).stdout.split()
        assert cpus == [str(os.cpu_count())], f"the node has {cpus} CPUs: expected this machine's"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", conf)  # sbatch, squeue and the jobs find the cluster
            yield folder
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], env=env, capture_output=True)


# The tests follow the jobs to their end (--wait); a short poll keeps them quick.
SLURM = ["--launcher", "slurm", "--wait", "--launcher.poll_s", "0.5"]


def test_two_slurm_workers_make_the_samples_of_one_local_run(slurm, tmp_path, tmp_path_factory):
    reference = make_dataset(tmp_path_factory.mktemp("local") / "data")
    out = make_dataset(tmp_path / "data", *SLURM, "--num-workers", "2",
                       "--launcher.cpus_per_task", "1")  # fmt: skip
    assert samples(out) == samples(reference) and len(samples(out)) == 20
    shards = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert shards == [
        "annotate-worker00.log",
        "annotate-worker01.log",
        "collect-worker00.log",
        "collect-worker01.log",
    ]


def test_a_failed_slurm_task_names_its_log_and_cancels_what_depends_on_it(slurm, tmp_path):
    cfg = LauncherConfig(cpus_per_task=1, poll_s=0.5)
    bad = Task("broken", [sys.executable, "-c", "raise SystemExit(4)"], tmp_path / "broken.log")
    after = Task("after", [sys.executable, "-c", "print('never')"], tmp_path / "after.log")
    with pytest.raises(SemoreError) as err:
        launch([Stage("first", [bad]), Stage("second", [after])], cfg, tmp_path / "submitit", True)
    assert (
        str(err.value)
        == f"broken failed (exit 4): see {tmp_path / 'broken.log'} (1 more task(s) failed)"
    )
    assert not (tmp_path / "after.log").exists()


def _study(tmp_path: Path) -> Path:
    small = {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 6}}
    study = {
        "dataset": {
            "collect_overrides": {"episodes": 2, "episodes_per_shard": 1, **small},
            "annotate_overrides": {"num_threads": 1},
        },
        "encoders": {
            "tiny": {
                "overrides": {
                    "encoder": {"num_filters": 8, "num_heads": 2},
                    "data": {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
                    "trainer": {"max_steps": 4, "val_check_interval": 4},
                }
            }
        },
        "overrides": {**TINY_FINETUNE, "env": small},
        "arms": {
            "tiny_frozen": {"encoder": "encoders.tiny", "overrides": {"encoder_mode": "frozen"}},
            "scratch": {"encoder": "none", "architecture_from": "encoders.tiny"},
        },
        "seeds": [0],
        "num_train_steps": 12,
        "eval_every_steps": 6,
        "num_eval_episodes": 1,
        "bootstrap_reps": 200,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _numbers(table: str) -> list[list[str]]:
    """table.md's table rows without the columns that measure time (CPU-min, wall time)."""
    rows, header = [], None
    for line in table.splitlines():
        if not line.startswith("|"):
            header = None  # the next table has its own header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [i for i, c in enumerate(cells) if "cpu" in c.lower() or "time" in c.lower()]
        rows.append([c for i, c in enumerate(cells) if i not in header])
    return rows


def test_a_study_on_slurm_reports_the_numbers_of_a_local_run(slurm, tmp_path, capsys):
    study = _study(tmp_path)
    # --jobs 1 locally and one task per node's cores on SLURM: every stage gets all cores.
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    assert (
        compare_main(["--config", str(study), "--out", str(local), "--jobs", "1", "--quiet"]) == 0
    )
    cores = str(os.cpu_count())
    argv = [
        "--config",
        str(study),
        "--out",
        str(cluster),
        *SLURM,
        "--launcher.cpus_per_task",
        cores,
    ]
    capsys.readouterr()
    assert compare_main(argv) == 0
    printed = capsys.readouterr().out
    for stage in ("collect: 1", "annotate: 1", "encoders: 1", "fine-tuning runs: 2", "report: 1"):
        assert f"{stage} task(s)" in printed
    ours, theirs = ((o / "report" / "table.md").read_text() for o in (cluster, local))
    assert _numbers(ours) == _numbers(theirs) and len(_numbers(ours)) > 4
    bullets = [[line for line in t.splitlines() if line.startswith("- ")] for t in (ours, theirs)]
    assert bullets[0] == bullets[1] and bullets[0]  # the sentences that say what it shows
    assert (cluster / "runs" / "scratch" / "seed0.log").stat().st_size > 0  # as the local runner
    assert compare_main(argv) == 0  # a rerun submits only the report: the rest is finished
    rerun = [line for line in capsys.readouterr().out.splitlines() if "task(s)" in line]
    assert len(rerun) == 1 and rerun[0].startswith("report: 1 task(s), job ")
