"""The README's headline on the baselines study is the committed study folder's: its run count,
the strongest baseline at the last report step, and where each Semore arm stands against it.
A rerun of the report that moves a number fails here until the README says the new one."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results" / "baselines"


def _results() -> dict:
    return json.loads((RESULTS / "results.json").read_text())


def _study() -> dict:
    return yaml.safe_load((RESULTS / "study.yaml").read_text())


def _readme() -> str:
    return " ".join(README.read_text().split())  # line breaks are layout, not content


def _iqm(arm: dict, steps: list[int], step: int) -> str:
    point = arm["curve"][steps.index(step)]
    return f"{point['iqm']:.2f} [{point['iqm_low']:.2f}, {point['iqm_high']:.2f}]"


def headline(results: dict, study: dict) -> list[str]:
    """The phrases the README's headline must hold, as the committed folder computes them."""
    steps, arms, ref = results["steps"], results["arms"], results["reference_arm"]
    step = results["report_steps"][-1]
    phrases = [f"At step {step} the strongest baseline is {ref} at {_iqm(arms[ref], steps, step)}"]
    for name in [a for a in study["arms"] if a not in study["baseline_arms"] and a in arms]:
        p = arms[name]["improvement"][str(step)]
        phrases.append(
            f"{name} {_iqm(arms[name], steps, step)}, P(> {ref}) "
            f"{p['iqm']:.2f} [{p['iqm_low']:.2f}, {p['iqm_high']:.2f}]"
        )
    return phrases


def test_the_readme_quotes_the_committed_headline():
    readme = _readme()
    missing = [phrase for phrase in headline(_results(), _study()) if phrase not in readme]
    assert not missing, f"README.md lacks the committed study's {missing}"


def test_the_readme_table_is_the_committed_table():
    """One README row per arm: its runs, IQM [interval] at each report step, CPU-minutes."""
    results = _results()
    steps = results["steps"]
    rows = {line.split("|")[1].strip(): line for line in README.read_text().splitlines()
            if line.startswith("| `")}  # fmt: skip
    for name, arm in results["arms"].items():
        cells = [str(len(arm["seeds"]))]
        cells += [_iqm(arm, steps, step) for step in results["report_steps"]]
        cells.append(f"{arm['cpu_min_per_run']:.0f}")
        assert rows.get(f"`{name}`") == f"| `{name}` | {' | '.join(cells)} |", name


def test_the_readme_states_how_many_runs_the_folder_holds():
    results, study = _results(), _study()
    finished = sum(len(arm["seeds"]) for arm in results["arms"].values())
    planned = len(study["arms"]) * len(study["seeds"])
    assert f"{finished} of {planned} runs" in _readme()


def test_the_reference_is_the_strongest_baseline_of_the_folder():
    """reference_arm strongest resolved to the baseline with the highest last-step IQM."""
    results, study = _results(), _study()
    column = results["steps"].index(results["report_steps"][-1])
    ran = [a for a in study["baseline_arms"] if a in results["arms"]]
    best = max(ran, key=lambda a: results["arms"][a]["curve"][column]["iqm"])
    assert results["reference_arm"] == best


def test_a_moved_number_is_caught():
    """The check is not vacuous: the headline of a changed result is not the README's."""
    results, study = _results(), _study()
    ref, column = results["reference_arm"], results["steps"].index(results["report_steps"][-1])
    results["arms"][ref]["curve"][column]["iqm"] += 0.05
    assert headline(results, study)[0] not in _readme()


def test_the_20k_continuation_picks_from_this_folder_on_a_fresh_checkout():
    preset = ROOT / "pipeline" / "presets" / "compare" / "baselines_20k.yaml"
    cont = yaml.safe_load(preset.read_text())["continue_best"]
    assert (ROOT / cont["from_results"]).resolve() == RESULTS.resolve()
    assert cont["from_step"] == _results()["report_steps"][-1]


CONTINUATION = ROOT / "benchmarks" / "results" / "baselines_20k"


def continuation_phrases(results: dict, study: dict) -> list[str]:
    """What the README says of the 20k continuation, as its committed folder computes it: how
    many runs it holds and each arm's IQM [interval] and run count at the last step."""
    arms, steps, step = results["arms"], results["steps"], results["report_steps"][-1]
    finished = sum(len(arm["seeds"]) for arm in arms.values())
    phrases = [f"{finished} of {len(study['arms']) * len(study['seeds'])} runs"]
    for name, arm in arms.items():
        runs = len(arm["seeds"])
        phrases.append(f"`{name}` {_iqm(arm, steps, step)} ({runs} run{'s' if runs > 1 else ''}")
    return phrases


def test_the_readme_quotes_the_committed_continuation():
    results = json.loads((CONTINUATION / "results.json").read_text())
    study = yaml.safe_load((CONTINUATION / "study.yaml").read_text())
    assert set(results["arms"]) <= set(study["arms"]) == {"semore_guided", "drqv2"}
    readme = _readme()
    missing = [p for p in continuation_phrases(results, study) if p not in readme]
    assert not missing, f"README.md lacks the committed continuation's {missing}"
    results["arms"]["drqv2"]["curve"][-1]["iqm"] += 0.05  # and a moved number is caught
    assert not all(p in readme for p in continuation_phrases(results, study))
