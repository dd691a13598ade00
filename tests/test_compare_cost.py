"""A run's CPU cost in a study report: the fine-tuning loop's own count (kept over resumes), else
the runner's per-process count when it covers the run; a run whose count was lost to a stop is
left out of its arm's mean, not counted low, and the report names it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import cost_path, finetune_jobs
from pipeline.compare.records import from_job
from pipeline.compare.run import main
from pipeline.config import load_config

FIELDS = ["phase", "step", "episode", "episode_return", "distance_m", "mean_abs_steer",
          "wall_time_s", "normalized_return"]  # fmt: skip


def _study(tmp_path: Path) -> Path:
    study = {
        "finetune": "quickstart",
        "arms": {"m": {"encoder": "none"}, "b": {"encoder": "none"}},
        "seeds": [0, 1],
        "num_train_steps": 4,
        "eval_every_steps": 2,
        "num_eval_episodes": 1,
        "bootstrap_reps": 100,
        "baseline_arms": ["b"],
        "reference_arm": "b",
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _run(run: Path, wall_s: float, cpu_time_s: float | None = None) -> None:
    """A finished 4-step run folder whose summary reports ``wall_s`` (and the loop's count)."""
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for step in (0, 2, 4):
            writer.writerow({"phase": "eval", "step": step, "episode": 0, "episode_return": 1.0,
                             "distance_m": 10.0, "mean_abs_steer": 0.1,
                             "wall_time_s": wall_s * step / 4, "normalized_return": 0.5})  # fmt: skip
    summary = {"step": 4, "wall_time_s": wall_s, "cpu_time_s": cpu_time_s}
    (run / "summary.json").write_text(json.dumps(summary))


def _cost(job, cpu_s: float, wall_s: float) -> None:
    cost_path(job).write_text(json.dumps({"cpu_s": cpu_s, "wall_s": wall_s, "threads": 1}))


def test_the_cpu_count_of_a_run_and_of_its_arm(tmp_path):
    config, out = _study(tmp_path), tmp_path / "out"
    cfg = load_config(CompareConfig, config, stage="compare")
    jobs = {(job.arm, job.seed): job for job in finetune_jobs(cfg, out)}
    _run(jobs["m", 0].out, wall_s=100.0, cpu_time_s=90.0)  # the loop's own count wins
    _cost(jobs["m", 0], cpu_s=30.0, wall_s=40.0)
    _run(jobs["m", 1].out, wall_s=100.0)  # an older run: the runner's count covers it
    _cost(jobs["m", 1], cpu_s=120.0, wall_s=104.0)
    _run(jobs["b", 0].out, wall_s=100.0)  # resumed after a stop that lost 60 s of its count
    _cost(jobs["b", 0], cpu_s=35.0, wall_s=40.0)
    _run(jobs["b", 1].out, wall_s=100.0)  # no count at all
    assert from_job(jobs["m", 0], 4).cpu_s == pytest.approx(90.0)
    assert from_job(jobs["m", 0], 2).cpu_s == pytest.approx(45.0)  # the budget's share
    assert from_job(jobs["m", 1], 4).cpu_s == pytest.approx(120.0)
    assert from_job(jobs["b", 0], 4).cpu_s is None
    assert from_job(jobs["b", 1], 4).cpu_s is None

    report = tmp_path / "report"
    argv = ["--config", str(config), "--out", str(out), "--report", str(report), "--report-only"]
    assert main(argv) == 0
    arms = json.loads((report / "results.json").read_text())["arms"]
    assert arms["m"]["cpu_min_per_run"] == pytest.approx(105.0 / 60)  # mean of 90 and 120 s
    assert arms["m"]["cpu_measured"] and arms["m"]["cpu_s_per_seed"].keys() == {"0", "1"}
    # No run of b was counted in full: wall time x threads, marked as an estimate.
    assert not arms["b"]["cpu_measured"] and arms["b"]["cpu_s_per_seed"] == {}
    table = (report / "table.md").read_text()
    assert "| ~" in table.split("\n| b |")[1].splitlines()[0]

    _cost(jobs["b", 1], cpu_s=99.0, wall_s=101.0)  # one of b's runs counted: its mean alone
    assert main(argv) == 0
    arms = json.loads((report / "results.json").read_text())["arms"]
    assert arms["b"]["cpu_min_per_run"] == pytest.approx(99.0 / 60) and arms["b"]["cpu_measured"]
    assert "left out (resumed after a stop" in (report / "table.md").read_text()
    assert "b seed 0." in (report / "table.md").read_text()
