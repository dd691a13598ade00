"""The README's quickstart numbers are the committed quickstart folder's, and the script that
checks a new ``make quickstart`` against that folder finds what differs."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_spec = importlib.util.spec_from_file_location(
    "check_quickstart", ROOT / "benchmarks" / "check_quickstart.py"
)
check_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_quickstart)
COMPARE_RUNS, RESULTS, RUN_REPORT_RUNS = (
    check_quickstart.COMPARE_RUNS,
    check_quickstart.RESULTS,
    check_quickstart.RUN_REPORT_RUNS,
)
compare, main = check_quickstart.compare, check_quickstart.main
FINAL_STEP = 2000  # the quick comparison's last evaluation (pipeline/presets/compare/quick.yaml)


def _results() -> dict:
    return json.loads((RESULTS / "compare" / "results.json").read_text())


def _iqm_at(arm: dict, steps: list[int], step: int) -> float:
    return arm["curve"][steps.index(step)]["iqm"]


def test_the_readme_quotes_the_committed_comparison():
    results = _results()
    steps, arms = results["steps"], results["arms"]
    ours, reference = arms["semore_frozen"], arms["random_frozen"]
    p = ours["improvement"][str(FINAL_STEP)]
    sentence = (
        f"Semore frozen scored {_iqm_at(ours, steps, FINAL_STEP):.2f} against "
        f"{_iqm_at(reference, steps, FINAL_STEP):.2f} for random frozen at {FINAL_STEP} steps, "
        f"probability of improvement {p['iqm']:.2f} [{p['iqm_low']:.2f}, {p['iqm_high']:.2f}]"
    )
    readme = " ".join(README.read_text().split())  # line breaks are layout, not content
    assert sentence in readme


def test_the_readme_quotes_the_committed_verdict():
    """The report's reading of its last step (pipeline/compare/writing.py) is the README's."""
    table = (RESULTS / "compare" / "table.md").read_text()
    shows = table.split("## What it shows")[1].split("##")[0]
    readings = ("no clear difference", "its runs are likely better", "its runs are likely worse")
    (verdict,) = [reading for reading in readings if reading in shows]
    assert f'says "{verdict}"' in " ".join(README.read_text().split())


def test_the_readme_quotes_the_committed_probe():
    pretrained = json.loads((RESULTS / "probe_pretrained.json").read_text())["r2"]
    random = json.loads((RESULTS / "probe_random.json").read_text())["r2"]
    readme = " ".join(README.read_text().split())
    for label, target in (
        ("speed R²", "speed"),
        ("lateral offset", "lateral_offset"),
        ("reward", "reward"),
    ):
        assert f"{label} {pretrained[target]:.2f} vs {random[target]:.2f}" in readme


def _copy_as_run(tmp_path: Path) -> Path:
    """A quickstart output folder holding what the committed folder holds, where semore-run
    writes it."""
    run = tmp_path / "run"
    (run / RUN_REPORT_RUNS).mkdir(parents=True)
    for name in ("probe_pretrained.json", "probe_random.json"):
        shutil.copy(RESULTS / name, run / name)
    for path in (RESULTS / COMPARE_RUNS).glob("*.csv"):
        shutil.copy(path, run / RUN_REPORT_RUNS / path.name)
    return run


def _rewrite_first_eval(path: Path, column: str, value: str) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_the_committed_folder_matches_itself(tmp_path, capsys):
    assert compare(_copy_as_run(tmp_path)) == []
    assert main([str(tmp_path / "run")]) == 0
    assert "matches" in capsys.readouterr().out


def test_wall_clock_columns_are_not_compared(tmp_path):
    run = _copy_as_run(tmp_path)
    _rewrite_first_eval(run / RUN_REPORT_RUNS / "semore_frozen-seed0.csv", "wall_time_s", "123.0")
    assert compare(run) == []


def test_a_changed_score_is_found_and_named(tmp_path, capsys):
    run = _copy_as_run(tmp_path)
    _rewrite_first_eval(
        run / RUN_REPORT_RUNS / "random_frozen-seed1.csv", "normalized_return", "0.5"
    )
    assert main([str(run)]) == 1
    out = capsys.readouterr().out
    assert "random_frozen-seed1.csv: row 2, normalized_return: '0.5'" in out


def test_a_changed_probe_is_found(tmp_path):
    run = _copy_as_run(tmp_path)
    probe = json.loads((run / "probe_random.json").read_text())
    probe["r2"]["speed"] += 0.01
    (run / "probe_random.json").write_text(json.dumps(probe))
    assert compare(run) == [
        f"probe_random.json: the probe differs from {RESULTS / 'probe_random.json'}"
    ]


@pytest.mark.parametrize(
    "missing", ["probe_pretrained.json", "compare/report/runs/semore_frozen-seed2.csv"]
)
def test_a_missing_file_is_named_with_exit_2(tmp_path, capsys, missing):
    run = _copy_as_run(tmp_path)
    (run / missing).unlink()
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and missing.split("/")[-1] in err and "\n" == err[-1]
