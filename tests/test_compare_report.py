"""A study report rebuilt from a results folder: the verdict sentences, the matched-learner
check, the cost column, no machine paths, and one-line errors for missing scores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from pipeline.compare.run import main
from pipeline.compare.writing import config_label
from pipeline.config import resolve_config
from pipeline.report import _study_sections

FIELDS = [
    "phase",
    "step",
    "episode",
    "episode_return",
    "distance_m",
    "mean_abs_steer",
    "wall_time_s",
    "normalized_return",
]


def _csv(scores: list[float], with_score: bool = True) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, FIELDS)
    writer.writeheader()
    for i, score in enumerate(scores):
        writer.writerow(
            {
                "phase": "eval",
                "step": 1000 * i,
                "episode": 0,
                "episode_return": score,
                "distance_m": 100.0,
                "mean_abs_steer": 0.1,
                "wall_time_s": 60.0 * i,
                "normalized_return": score if with_score else "",
            }
        )
    return out.getvalue()


def results_folder(
    tmp_path: Path, unmatched_ok: list[str] = (), with_score: bool = True, num_seeds: int = 5
) -> Path:
    """Two arms x num_seeds seeds, frozen 0.5 above scratch at every step; frozen uses batch 128."""
    folder = tmp_path / "results"
    (folder / "runs").mkdir(parents=True)
    study = {
        "arms": {
            "scratch": {"encoder": "none"},
            "frozen": {
                "encoder": "none",
                "overrides": {"encoder_mode": "frozen", "batch_size": 128},
            },
        },
        "num_train_steps": 2000,
        "eval_every_steps": 1000,
        "unmatched_ok": list(unmatched_ok),
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    for seed in range(num_seeds):
        base = [0.0, 0.1 + 0.02 * seed, 0.2 + 0.02 * seed]
        for arm, lift in (("scratch", 0.0), ("frozen", 0.5)):
            scores = [s + lift for s in base]
            (folder / "runs" / f"{arm}-seed{seed}.csv").write_text(_csv(scores, with_score))
    reference = {"expert_return": 400.0, "random_return": 10.0, "eval_seeds": [1, 2]}
    (folder / "results.json").write_text(json.dumps({"reference": reference}))
    return folder


def test_report_from_results_says_what_it_shows_and_flags_unmatched_arms(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.compare.jobs.os.cpu_count", lambda: 2)
    folder = results_folder(tmp_path)
    assert main(["--from-results", str(folder), "--bootstrap_reps", "300", "--quiet"]) == 0
    table = (folder / "table.md").read_text()
    verdict = table.split("## What it shows\n\n")[1].splitlines()
    assert verdict[0].startswith("- At step 2000, frozen is ahead of scratch by 0.50 IQM")
    assert "1.00 [1.00, 1.00], an interval above 0.5" in verdict[0]
    assert verdict[1].startswith("- Not one learner: the arms differ in batch_size")
    assert "| frozen | 5 |" in table and "batch_size 128" in table and "batch_size 32" in table
    assert "| ~2.0 |" in table  # 2 min of wall time x 1 thread (2 cores, 2 jobs): not measured
    assert "CPU-hours per arm (runs x CPU-min / run): frozen 0.2, scratch 0.2; 0.3 in all." in table
    assert str(tmp_path) not in table and "`" not in table
    assert "semore-compare --config study.yaml" in table
    results = json.loads((folder / "results.json").read_text())
    assert results["learner_differs_in"] == ["batch_size"]
    assert results["arms"]["frozen"]["improvement"]["2000"]["iqm"] == 1.0
    assert (folder / "curves.png").stat().st_size > 1000

    # The verdicts render as HTML, not as raw markdown.
    verdicts, tables = _study_sections(table)
    assert verdicts.startswith("<ul>") and "<li>At step 2000, frozen" in verdicts
    assert "<table>" in tables and "|---" not in tables and "`" not in verdicts + tables


def test_a_verdict_from_too_few_runs_says_so(tmp_path):
    folder = results_folder(tmp_path, num_seeds=2)
    assert main(["--from-results", str(folder), "--bootstrap_reps", "100", "--quiet"]) == 0
    verdict = (folder / "table.md").read_text().split("## What it shows\n\n")[1].splitlines()[0]
    assert "from 2 run(s) per arm at the fewest, too few for the interval" in verdict
    assert "likely better" not in verdict


def test_arms_unmatched_on_purpose_are_not_flagged(tmp_path):
    folder = results_folder(tmp_path, unmatched_ok=["batch_size"])
    assert main(["--from-results", str(folder), "--bootstrap_reps", "100", "--quiet"]) == 0
    table = (folder / "table.md").read_text()
    assert "Not one learner" not in table
    assert "differ on purpose (unmatched_ok) in batch_size" in table


def test_runs_without_reference_scores_are_a_one_line_error(tmp_path, capsys):
    folder = results_folder(tmp_path, with_score=False)  # as with measure_reference: false
    assert main(["--from-results", str(folder), "--bootstrap_reps", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no normalized_return" in err and "measure_reference" in err


def test_config_label_names_presets_never_paths(tmp_path):
    assert config_label("quick") == "quick"
    assert config_label(str(resolve_config("quick", "compare"))) == "quick"
    own = tmp_path / "mine.yaml"
    own.write_text("{}")
    assert config_label(str(own)) == "study.yaml"


def test_a_batch_smaller_than_jobs_shares_every_core(monkeypatch):
    from pipeline.compare.jobs import threads_per_job

    monkeypatch.setattr("pipeline.compare.jobs.os.cpu_count", lambda: 8)
    assert threads_per_job(num_jobs=2, num_todo=1) == 8  # one pretraining job: all cores
    assert threads_per_job(num_jobs=2, num_todo=10) == 4
    assert threads_per_job(num_jobs=16, num_todo=40) == 1


def test_strongest_baseline_is_the_reference_and_also_compare_to_gets_its_own_table(tmp_path):
    """reference_arm strongest: the baseline with the highest final IQM is the reference (here
    atc, above drqv2); only the method's arms get sentences; drqv2 gets a table too."""
    folder = tmp_path / "results"
    (folder / "runs").mkdir(parents=True)
    study = {
        "arms": {name: {"encoder": "none"} for name in ("guided", "drqv2", "atc")},
        "baseline_arms": ["drqv2", "atc"], "reference_arm": "strongest",
        "also_compare_to": ["drqv2"], "num_train_steps": 2000, "eval_every_steps": 1000,
    }  # fmt: skip
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    for seed in range(5):
        base = [0.0, 0.1 + 0.02 * seed, 0.2 + 0.02 * seed]
        for arm, lift in (("guided", 0.2), ("drqv2", 0.0), ("atc", 0.3)):
            scores = [s + lift for s in base]
            (folder / "runs" / f"{arm}-seed{seed}.csv").write_text(_csv(scores))
    reference = {"expert_return": 400.0, "random_return": 10.0, "eval_seeds": [1, 2]}
    (folder / "results.json").write_text(json.dumps({"reference": reference}))
    assert main(["--from-results", str(folder), "--bootstrap_reps", "300", "--quiet"]) == 0
    table = (folder / "table.md").read_text()
    verdict = table.split("## What it shows\n\n")[1].split("\n\n")[0].splitlines()
    assert verdict[0] == "- The strongest baseline at step 2000 is atc (of drqv2, atc)."
    assert verdict[1].startswith("- At step 2000, guided is behind atc by 0.10 IQM")
    assert "0.00 [0.00, 0.00], an interval below 0.5" in verdict[1]
    assert verdict[2].startswith("- At step 2000, guided is ahead of drqv2 by 0.20 IQM")
    assert len(verdict) == 3  # no sentence for a baseline against a baseline
    assert "Probability of improvement over atc (the strongest baseline" in table
    assert "Probability of improvement over drqv2, P(" in table
    results = json.loads((folder / "results.json").read_text())
    assert results["reference_arm"] == "atc"
    assert results["arms"]["guided"]["improvement_over_drqv2"]["2000"]["iqm"] == 1.0
