"""The results folder of a study: table.md (opened by sentences that say what the numbers
show), curves.png, per-run CSVs, results.json, the exact commands.

Scores are expert-normalised returns, (R - R_random) / (R_expert - R_random), with the
expert's and uniform-random returns measured on the same fixed evaluation episodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from pipeline.compare import estimates
from pipeline.compare.analysis import Analysis, analyse
from pipeline.compare.carry import save_encoders
from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import threads_per_job
from pipeline.compare.plots import plot_curves
from pipeline.compare.records import RUNS_DIR, RunRecord, final_means
from pipeline.compare.writing import commands_script, verdicts, write
from pipeline.config import to_dict
from pipeline.data import manifest as mf


def _cell(estimate: estimates.Estimate, i: int) -> str:
    value, low, high = estimate.at(i)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _score_table(cfg: CompareConfig, a: Analysis, records: list[RunRecord]) -> list[str]:
    """IQM per report step, P(> reference) at the last, behaviour, learner and cost per arm."""
    last, ref = a.report_steps[-1], a.reference
    head = [
        "arm",
        "runs",
        *(f"step {s}" for s in a.report_steps),
        f"P(> {ref}) at {last}",
        "mean abs steer",
        "distance (m)",
        "learner",
        "CPU-min / run",
    ]
    align = ["---", *["---:"] * (len(head) - 3), "---", "---:"]  # arm and learner are words
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for arm, matrix in a.scores.items():
        poi = _cell(a.improvement[arm], -1) if arm in a.improvement else "(reference)"
        steer = final_means(records, arm, last, "mean_abs_steer")
        dist = final_means(records, arm, last, "distance_m")
        cpu, measured = a.cpu_min[arm]
        cells = [
            arm,
            str(len(matrix)),
            *(_cell(a.curves[arm], a.column(s)) for s in a.report_steps),
            poi,
            "n/a" if steer is None else f"{steer:.2f}",
            "n/a" if dist is None else f"{dist:.0f}",
            a.learner.note(arm) or "same",
            f"{cpu:.1f}" if measured else f"~{cpu:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _improvement_table(cfg: CompareConfig, a: Analysis) -> list[str]:
    lines: list[str] = []
    chosen = (
        " (the strongest baseline at the last report step)"
        if cfg.reference_arm != a.reference
        else ""
    )
    for ref, table in [(a.reference, a.improvement), *a.also.items()]:
        if not table:
            continue
        lines += [
            f"Probability of improvement over {ref}{chosen if ref == a.reference else ''}, "
            "P(a run of the arm scores higher than a run of it) [95% interval]:",
            "",
            "| arm | " + " | ".join(f"step {s}" for s in a.report_steps) + " |",
            "|---|" + "---:|" * len(a.report_steps),
        ]
        for arm, est in table.items():
            cells = [_cell(est, i) for i in range(len(a.report_steps))]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _steps_to_reach(cfg: CompareConfig, a: Analysis) -> list[str]:
    ref = a.reference
    if len(a.scores) == 1:
        return []
    target = float(a.curves[ref].value[-1])
    lines = [f"Steps to reach {ref}'s final IQM ({target:.2f}):", ""]
    for arm in a.scores:
        if arm == ref:
            continue
        reached = a.reach[arm]
        lines.append(
            f"- {arm}: "
            + (
                f"not reached by step {int(a.steps[-1])}"
                if reached is None
                else f"step {int(reached)} ({reached / a.steps[-1]:.2f}x the budget)"
            )
        )
    return [*lines, ""]


def _footer(cfg: CompareConfig, records: list[RunRecord], a: Analysis, label: str) -> list[str]:
    saved = [r.reference for r in records if r.reference]
    distinct = {(r["expert_return"], r["random_return"]) for r in saved}
    lines = []
    if saved:
        lines += [
            f"Reference returns on the evaluation episodes: expert "
            f"{saved[0]['expert_return']:.1f}, uniform random {saved[0]['random_return']:.1f} "
            f"({len(distinct)} distinct value(s) across runs; 1 means every run saw the same "
            "task).",
            "",
        ]
    hours = {arm: cpu * len(a.scores[arm]) / 60 for arm, (cpu, _) in a.cpu_min.items()}
    lines += [
        "CPU-hours per arm (runs x CPU-min / run): "
        + ", ".join(f"{arm} {h:.1f}" for arm, h in hours.items())
        + f"; {sum(hours.values()):.1f} in all.",
        "",
    ]
    partial = {
        arm: [str(r.seed) for r in records if r.arm == arm and r.cpu_s is None]
        for arm, (_, measured) in a.cpu_min.items()
        if measured
    }
    partial = {arm: seeds for arm, seeds in partial.items() if seeds}
    if partial:
        lines += [
            "CPU-min / run is the mean of the runs whose CPU time was counted in full; left out "
            "(resumed after a stop whose process was ended before it reported its count): "
            + "; ".join(f"{arm} seed {', '.join(seeds)}" for arm, seeds in partial.items())
            + ".",
            "",
        ]
    estimated = [arm for arm, (_, measured) in a.cpu_min.items() if not measured]
    if estimated:
        lines += [
            f"CPU-min / run marked ~ is wall time x {threads_per_job(cfg.jobs, len(records))}"
            " thread(s) per run (the runner gives each of its jobs an equal share of the "
            "cores); the others are the runs' measured CPU time.",
            "",
        ]
    return lines + [
        "Reproduce: the commands in commands.sh (one semore-finetune per run), or "
        f"semore-compare --config {label} --out OUT; the study config is study.yaml."
    ]


def table_markdown(cfg: CompareConfig, a: Analysis, records: list[RunRecord], label: str) -> str:
    """table.md: what it shows in words, then the tables."""
    seeds = sorted({r.seed for r in records})
    lines = [
        "# Fine-tuning study: expert-normalised evaluation return",
        "",
        "## What it shows",
        "",
        *verdicts(cfg, a),
        "",
        "## Scores",
        "",
        f"IQM over runs with its 95% stratified bootstrap interval ({cfg.bootstrap_reps} "
        "resamples, rliable); 0 = uniform random actions, 1 = the built-in expert, on "
        f"{cfg.num_eval_episodes} fixed evaluation episodes disjoint from training episodes. "
        f"Seeds: {', '.join(map(str, seeds))}. Mean abs steer and distance per evaluation "
        "episode at the last step; learner: the arm's settings where arms differ.",
        "",
        *_score_table(cfg, a, records),
        "",
        *_improvement_table(cfg, a),
        *_steps_to_reach(cfg, a),
        *_footer(cfg, records, a, label),
    ]
    return "\n".join(lines) + "\n"


def _results_json(cfg: CompareConfig, a: Analysis, records: list[RunRecord]) -> str:
    def curve(est: estimates.Estimate) -> list[dict]:
        return [
            dict(zip(("iqm", "iqm_low", "iqm_high"), est.at(i), strict=True))
            for i in range(len(est.value))
        ]

    arms = {}
    for arm, matrix in a.scores.items():
        mine = [r for r in records if r.arm == arm]
        arms[arm] = {
            "seeds": [r.seed for r in mine],
            "scores": matrix.tolist(),
            "curve": curve(a.curves[arm]),
            "wall_time_s": float(np.mean([r.wall_time_s for r in mine])),
            "cpu_min_per_run": a.cpu_min[arm][0],
            "cpu_measured": a.cpu_min[arm][1],
            "cpu_s_per_seed": {str(r.seed): r.cpu_s for r in mine if r.cpu_s is not None},
            "learner": a.learner.values[arm],
        }
        if arm in a.improvement:
            arms[arm]["improvement"] = dict(
                zip(map(str, a.report_steps), curve(a.improvement[arm]), strict=True)
            )
        for other, table in a.also.items():  # only studies that list also_compare_to
            if arm in table:
                arms[arm][f"improvement_over_{other}"] = dict(
                    zip(map(str, a.report_steps), curve(table[arm]), strict=True)
                )
        arms[arm]["profile"] = curve(a.profiles[arm])
    reference = next((r.reference for r in records if r.reference), None)
    results = {
        "steps": a.steps.tolist(),
        "report_steps": a.report_steps,
        "bootstrap_reps": cfg.bootstrap_reps,
        "profile_taus": estimates.PROFILE_TAUS.tolist(),
        "learner_differs_in": a.learner.differing,
        "arms": arms,
        "reference": reference
        and {k: reference[k] for k in ("expert_return", "random_return", "eval_seeds")},
    }
    if a.reference != cfg.reference_arm:  # "strongest": which baseline it was
        results["reference_arm"] = a.reference
    return json.dumps(results, indent=1) + "\n"


def write_results_folder(
    cfg: CompareConfig,
    records: list[RunRecord],
    folder: Path,
    label: str,
    setup_commands: list[str] = (),
    study: Path | None = None,
) -> Path:
    """Write the results folder for the finished runs ``records``; returns its path.

    ``label`` names the study config as a user types it (a preset name, or ``study.yaml``).
    ``setup_commands`` (the dataset and encoder commands) head ``commands.sh``, which is
    written when the runs were planned here; with the ``study`` folder, the dataset's
    provenance and each study encoder's config are copied too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    a = analyse(cfg, records)
    write(folder / "table.md", table_markdown(cfg, a, records, label))
    plot_curves(a, folder / "curves.png")
    (folder / RUNS_DIR).mkdir(exist_ok=True)
    for rec in records:
        write(folder / RUNS_DIR / f"{rec.arm}-seed{rec.seed}.csv", rec.csv_text)
    if study is not None:
        write(folder / "commands.sh", commands_script(setup_commands, records, study))
        _write_provenance(study, folder)
    write(folder / "study.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write(folder / "results.json", _results_json(cfg, a, records))
    return folder


def _write_provenance(study: Path, folder: Path) -> None:
    """``dataset.json`` (manifest hash, configs, totals), ``encoders/NAME.yaml`` and each
    study encoder's export ``encoders/NAME.pt`` (so the study can go on from this folder)."""
    manifest_file = study / "data" / "manifest.json"
    if manifest_file.is_file():
        manifest = mf.read_manifest(study / "data")
        keep = ("command", "config_hash", "git_revision", "totals", "config")
        dataset = {
            "manifest_sha256": hashlib.sha256(manifest_file.read_bytes()).hexdigest(),
            "format_version": manifest.get("format_version"),
            **{
                part: {k: manifest[part].get(k) for k in keep}
                for part in ("raw", "ann")
                if part in manifest
            },
        }
        write(folder / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    for config in sorted((study / "encoders").glob("*/config.yaml")):
        (folder / "encoders").mkdir(exist_ok=True)
        write(folder / "encoders" / f"{config.parent.name}.yaml", config.read_bytes())
    save_encoders(study, folder)
