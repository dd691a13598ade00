"""``benchmarks/drive_profile.py``: a run's policy driven again on its evaluation episodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.finetune.eval import read_metrics
from tests.test_finetune import one_thread  # noqa: F401  (autouse)
from tests.test_guided import pretrained, run  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "drive_profile.py"


@pytest.fixture(scope="module")
def drive_profile():
    spec = importlib.util.spec_from_file_location("drive_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_replays_the_runs_last_evaluation(drive_profile, pretrained, tmp_path):  # noqa: F811
    out = tmp_path / "guided"  # a guided checkpoint: its guide terms are not needed to act
    assert run(pretrained, out, "--encoder_mode", "guided", "--measure_reference", "false") == 0
    last_eval = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "eval"][-1]
    table = tmp_path / "profile.md"
    assert drive_profile.main([str(out), "--out", str(table)]) == 0
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| driver | return | distance (m) |") and len(lines) == 4
    agent, expert = (line.split(" | ") for line in lines[2:])
    assert agent[0] == f"| {out}" and expert[0] == "| expert"
    # The same policy on the same episodes: the loop's last evaluation, to the table's digits.
    assert float(agent[1]) == pytest.approx(float(last_eval["episode_return"]), abs=0.06)
    assert float(agent[2]) == pytest.approx(float(last_eval["distance_m"]), abs=0.06)
    assert float(agent[-1].rstrip(" |")) == pytest.approx(float(last_eval["episode_steps"]))
    assert float(expert[-1].rstrip(" |")) == 15  # the expert drives the 15-step episode out


def test_a_folder_without_a_checkpoint_is_a_one_line_error(drive_profile, tmp_path, capsys):
    assert drive_profile.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {tmp_path}/checkpoints/last.pt not found: expected a semore-finetune run's "
        "checkpoint (RUN/checkpoints/last.pt)"
    ]


def test_a_corrupt_checkpoint_is_a_one_line_error(drive_profile, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert drive_profile.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: {tmp_path}/checkpoints/last.pt is not readable"
    )
