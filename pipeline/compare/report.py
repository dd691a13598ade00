"""The results folder of a study: table.md, curves.png, per-run CSVs, the exact commands.

Scores are expert-normalised returns, (R - R_random) / (R_expert - R_random), with the
expert's and uniform-random returns measured on the same fixed evaluation episodes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from pipeline.compare import stats
from pipeline.compare.config import CompareConfig
from pipeline.config import to_dict
from pipeline.files import atomic_write
from pipeline.finetune.eval import read_metrics
from pipeline.finetune.loop import METRICS_NAME, SUMMARY_NAME
from pipeline.finetune.reference import REFERENCE_NAME

if TYPE_CHECKING:
    from pipeline.compare.run import Job

SCORE = "normalized_return"


def eval_scores(job: Job, max_step: int) -> dict[int, float]:
    """Step -> expert-normalised evaluation return of one run, up to ``max_step`` (a longer
    study may have continued the run in the same folder)."""
    rows = read_metrics(job.out / METRICS_NAME)
    return {
        int(r["step"]): float(r[SCORE])
        for r in rows
        if r["phase"] == "eval" and r.get(SCORE) and int(r["step"]) <= max_step
    }


def score_matrix(jobs: list[Job], max_step: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Evaluated steps up to ``max_step`` common to all runs, and per arm (runs, steps) scores."""
    per_run = {job: eval_scores(job, max_step) for job in jobs}
    steps = sorted(set.intersection(*(set(s) for s in per_run.values())))
    arms: dict[str, list[list[float]]] = {}
    for job, scores in per_run.items():
        arms.setdefault(job.arm, []).append([scores[s] for s in steps])
    return np.asarray(steps), {arm: np.asarray(rows) for arm, rows in arms.items()}


def _wall_time_s(job: Job, max_step: int) -> float:
    """The run's wall time when it reached ``max_step``: the summary's, unless the run went on."""
    summary = json.loads((job.out / SUMMARY_NAME).read_text())
    if summary.get("step", max_step) <= max_step:
        return float(summary["wall_time_s"])
    rows = read_metrics(job.out / METRICS_NAME)
    return max(float(r["wall_time_s"]) for r in rows if int(r["step"]) <= max_step)


def _rows_up_to(job: Job, max_step: int) -> str:
    """The run's metrics.csv without the rows after ``max_step``."""
    lines = (job.out / METRICS_NAME).read_text().splitlines(keepends=True)
    header, rows = lines[0], csv.DictReader(lines)
    kept = [line for line, row in zip(lines[1:], rows, strict=True) if int(row["step"]) <= max_step]
    return header + "".join(kept)


def _at_or_before(steps: np.ndarray, wanted: int) -> int:
    eligible = steps[steps <= wanted]
    return int(eligible[-1]) if len(eligible) else int(steps[0])


def write_report(
    cfg: CompareConfig,
    jobs: list[Job],
    folder: Path,
    config_arg: str,
    setup_commands: list[str] = (),
    study: Path | None = None,
) -> Path:
    """Write the results folder for the finished ``jobs``; returns its path.

    ``setup_commands`` (the dataset and encoder commands) head ``commands.sh``; with the
    ``study`` folder, the dataset's provenance and each study encoder's config are copied too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    steps, scores = score_matrix(jobs, cfg.num_train_steps)
    curves = {arm: [stats.interval_estimate(m[:, i : i + 1]) for i in range(len(steps))]
              for arm, m in scores.items()}  # fmt: skip
    iqm = {arm: np.array([c["iqm"] for c in cs]) for arm, cs in curves.items()}

    lines = [
        "# Fine-tuning study: expert-normalised evaluation return",
        "",
        f"IQM over runs with its 95% stratified bootstrap interval (2000 resamples); 0 = uniform "
        f"random actions, 1 = the built-in expert, on {cfg.num_eval_episodes} fixed evaluation "
        f"episodes disjoint from training episodes. Seeds: {', '.join(map(str, cfg.seeds))}.",
        "",
    ]
    report_steps = sorted({_at_or_before(steps, s) for s in cfg.steps_to_report()})
    header = (
        "| arm | runs | " + " | ".join(f"step {s}" for s in report_steps) + " | wall time / run |"
    )
    lines += [header, "|---|---:|" + "---:|" * len(report_steps) + "---:|"]
    wall = {}
    for arm, matrix in scores.items():
        cells = []
        for s in report_steps:
            c = curves[arm][int(np.flatnonzero(steps == s)[0])]
            cells.append(f"{c['iqm']:.2f} [{c['iqm_low']:.2f}, {c['iqm_high']:.2f}]")
        times = [_wall_time_s(j, cfg.num_train_steps) for j in jobs if j.arm == arm]
        wall[arm] = float(np.mean(times))
        lines.append(
            f"| {arm} | {len(matrix)} | " + " | ".join(cells) + f" | {wall[arm] / 60:.1f} min |"
        )

    ref = cfg.reference_arm
    if ref in iqm:
        target = float(iqm[ref][-1])
        ref_final = curves[ref][-1]
        lines += ["", f"Steps to reach the `{ref}` arm's final IQM ({target:.2f}):", ""]
        for arm in scores:
            if arm == ref:
                continue
            # After step 0: an untrained actor that happens to steer straight can score
            # ~0.5 before any update (seen in the study), which is luck, not learning.
            reached = stats.steps_to_reach(steps, iqm[arm], target, after=0)
            if reached is None:
                lines.append(f"- `{arm}`: not reached by step {int(steps[-1])}")
                continue
            i = int(np.flatnonzero(steps == reached)[0])
            here, there = curves[arm][i], curves[ref][i]
            apart = not stats.intervals_overlap(
                (here["iqm_low"], here["iqm_high"]), (there["iqm_low"], there["iqm_high"])
            )
            lines.append(
                f"- `{arm}`: step {int(reached)} ({reached / steps[-1]:.2f}x the budget); at that "
                f"step its interval {'does not overlap' if apart else 'overlaps'} `{ref}`'s"
            )
        lines.append(
            f"\n`{ref}` final: {ref_final['iqm']:.2f} [{ref_final['iqm_low']:.2f}, "
            f"{ref_final['iqm_high']:.2f}]"
        )
    saved = [json.loads((j.out / REFERENCE_NAME).read_text()) for j in jobs
             if (j.out / REFERENCE_NAME).is_file()]  # fmt: skip
    distinct = {(r["expert_return"], r["random_return"]) for r in saved}
    expert = saved[0]
    lines += [
        "",
        f"Reference returns on the evaluation episodes: expert {expert['expert_return']:.1f}, "
        f"uniform random {expert['random_return']:.1f} ({len(distinct)} distinct value(s) "
        "across runs; 1 means every run saw the same task).",
        "",
        "Reproduce: the commands in `commands.sh` (one `semore-finetune` per run), or "
        f"`semore-compare --config {config_arg} --out OUT`; the study config is `study.yaml`.",
    ]
    _write(folder / "table.md", "\n".join(lines) + "\n")

    _plot_iqm(curves, folder / "curves.png", scores, steps)

    runs_dir = folder / "runs"
    runs_dir.mkdir(exist_ok=True)
    for job in jobs:
        _write(runs_dir / f"{job.arm}-seed{job.seed}.csv", _rows_up_to(job, cfg.num_train_steps))
    _write(
        folder / "commands.sh",
        "#!/usr/bin/env bash\n# The study's dataset and encoders, then one semore-finetune run per "
        "line (paths relative to where semore-compare ran).\n"
        + "".join(line + "\n" for line in setup_commands)
        + "".join(shlex.join(["semore-finetune", *job.argv]) + "\n" for job in jobs),
    )
    if study is not None:
        _write_provenance(study, folder)
    _write(folder / "study.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    results = {
        "steps": steps.tolist(),
        "arms": {
            arm: {"scores": scores[arm].tolist(), "curve": curves[arm], "wall_time_s": wall[arm]}
            for arm in scores
        },  # fmt: skip
        "reference": {k: expert[k] for k in ("expert_return", "random_return", "eval_seeds")},
    }
    _write(folder / "results.json", json.dumps(results, indent=1) + "\n")
    return folder


def _write_provenance(study: Path, folder: Path) -> None:
    """``dataset.json`` (manifest hash, configs, totals) and ``encoders/NAME.yaml``."""
    manifest_file = study / "data" / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        keep = ("command", "config_hash", "git_revision", "totals", "config")
        dataset = {
            "manifest_sha256": hashlib.sha256(manifest_file.read_bytes()).hexdigest(),
            "format_version": manifest.get("format_version"),
            **{
                part: {k: manifest[part].get(k) for k in keep}
                for part in ("raw", "ann")
                if part in manifest
            },  # fmt: skip
        }
        _write(folder / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    for config in sorted((study / "encoders").glob("*/config.yaml")):
        (folder / "encoders").mkdir(exist_ok=True)
        _write(folder / "encoders" / f"{config.parent.name}.yaml", config.read_bytes())


def _write(path: Path, content: str | bytes) -> None:
    """Write ``content`` unless the file already holds it (a rerun changes no file)."""
    data = content.encode() if isinstance(content, str) else content
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write(path, data)


def _plot_iqm(curves: dict[str, list[dict]], path: Path, scores: dict, steps: np.ndarray) -> None:
    """IQM curves with 95% bands (left) and the final performance profiles (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, prof) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, curve in curves.items():
        ax.plot(steps, [c["iqm"] for c in curve], "o-", label=arm)
        ax.fill_between(
            steps, [c["iqm_low"] for c in curve], [c["iqm_high"] for c in curve], alpha=0.2
        )
        taus = np.linspace(-0.2, 1.2, 57)
        prof.plot(taus, stats.performance_profile(scores[arm][:, -1], taus), label=arm)
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="expert")
    ax.axhline(0.0, color="gray", ls=":", lw=0.8, label="uniform random")
    ax.set(xlabel="agent step", ylabel="IQM expert-normalised return", title="sample efficiency")
    prof.set(xlabel="normalised return τ", ylabel="fraction of runs > τ",
             title=f"performance profile at step {int(steps[-1])}")  # fmt: skip
    for a in (ax, prof):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    _write(path, buffer.getvalue())
