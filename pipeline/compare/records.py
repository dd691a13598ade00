"""The finished runs a report reads: from the study's run folders, or from a results folder's
own ``runs/ARM-seedS.csv`` (so a committed report can be rebuilt when the runs are gone)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.compare import results_schema
from pipeline.compare.jobs import Job, cost_path
from pipeline.errors import SemoreError
from pipeline.finetune.eval import METRICS_NAME, SUMMARY_NAME
from pipeline.finetune.reference import REFERENCE_NAME

SCORE = "normalized_return"
RUNS_DIR = "runs"


@dataclass(eq=False)
class RunRecord:
    arm: str
    seed: int
    csv_text: str  # the run's metrics.csv rows up to the study's budget
    wall_time_s: float  # when the run reached the budget
    cpu_s: float | None = None  # measured CPU time of its processes; None: not recorded
    reference: dict | None = None  # expert and random returns of its evaluation episodes
    argv: list[str] | None = None  # its semore-finetune arguments, when planned here

    @property
    def rows(self) -> list[dict]:
        return list(csv.DictReader(self.csv_text.splitlines()))

    def eval_rows(self) -> list[dict]:
        return [r for r in self.rows if r["phase"] == "eval"]


def _read(path: Path) -> str:
    """A CSV's text with its line endings as written (csv writes \\r\\n; read_text would
    turn them into \\n and a rebuilt report would rewrite every run file)."""
    return path.read_bytes().decode()


def rows_up_to(path: Path, max_step: int) -> str:
    """A metrics.csv without the rows after ``max_step`` (a longer study may have continued
    the run in the same folder)."""
    lines = _read(path).splitlines(keepends=True)
    rows = csv.DictReader(lines)
    kept = [line for line, row in zip(lines[1:], rows, strict=True) if int(row["step"]) <= max_step]
    return lines[0] + "".join(kept)


def _last_wall_time(csv_text: str) -> float:
    return max(float(r["wall_time_s"]) for r in csv.DictReader(csv_text.splitlines()))


# The runner's processes must account for this share of a run's own wall time for their CPU
# count to be the run's (process start-up makes it a little over 1 when none is missing).
COVERED_SHARE = 0.9


def _cpu_s(job: Job, summary: dict, total_wall: float) -> float | None:
    """The whole run's CPU seconds: the loop's own count over every resume when it kept one,
    else the runner's per-process count (``RUN.cost.json``) if its processes cover the run's
    wall time; None when neither does (a process stopped at the end of a session, say,
    before it reported, and its run was resumed later)."""
    if summary.get("cpu_time_s") is not None:
        return float(summary["cpu_time_s"])
    if not cost_path(job).is_file():
        return None
    cost = json.loads(cost_path(job).read_text())
    return cost["cpu_s"] if cost["wall_s"] >= COVERED_SHARE * total_wall else None


def from_job(job: Job, max_step: int) -> RunRecord:
    """The finished fine-tuning ``job``'s record, up to ``max_step``."""
    text = rows_up_to(job.out / METRICS_NAME, max_step)
    summary = json.loads((job.out / SUMMARY_NAME).read_text())
    total_wall = float(summary["wall_time_s"])
    wall = total_wall if summary.get("step", max_step) <= max_step else _last_wall_time(text)
    cpu = _cpu_s(job, summary, total_wall)
    cpu = None if cpu is None else cpu * min(1.0, wall / total_wall)  # the budget's share
    ref_file = job.out / REFERENCE_NAME
    reference = json.loads(ref_file.read_text()) if ref_file.is_file() else None
    return RunRecord(job.arm, job.seed, text, wall, cpu, reference, job.argv)


def from_results(folder: Path) -> list[RunRecord]:
    """The runs of a results folder: ``runs/ARM-seedS.csv`` and ``results.json``'s reference
    returns (and measured CPU seconds per run, where it recorded them)."""
    files = sorted((folder / RUNS_DIR).glob(results_schema.RUN_FILE_PATTERN))
    if not files:
        raise SemoreError(
            f"{folder / RUNS_DIR} has no ARM-seedS.csv files: expected a results "
            "folder written by semore-compare"
        )
    results = results_schema.read_results(folder)
    records = []
    for path in files:
        arm, seed = results_schema.run_name(path)
        text = _read(path)
        results_schema.check_run_rows(path, text)
        cpu = results.get("arms", {}).get(arm, {}).get("cpu_s_per_seed", {}).get(str(seed))
        records.append(
            RunRecord(arm, int(seed), text, _last_wall_time(text), cpu, results.get("reference"))
        )
    return records


def score_matrix(records: list[RunRecord]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Evaluated steps common to all runs, and per arm (runs, steps) expert-normalised scores."""
    per_run = {}
    for rec in records:
        scores = {int(r["step"]): float(r[SCORE]) for r in rec.eval_rows() if r.get(SCORE)}
        if not scores:
            raise SemoreError(
                f"run {rec.arm} seed {rec.seed} has no {SCORE} in its eval rows: the report needs "
                "reference scores (expert and random returns); rerun it without "
                "measure_reference: false, or measure them with semore-reference"
            )
        per_run[rec] = scores
    steps = sorted(set.intersection(*(set(s) for s in per_run.values())))
    if not steps:
        raise SemoreError("the runs share no evaluated step: expected the same eval_every_steps")
    arms: dict[str, list[list[float]]] = {}
    for rec, scores in per_run.items():
        arms.setdefault(rec.arm, []).append([scores[s] for s in steps])
    return np.asarray(steps), {arm: np.asarray(rows) for arm, rows in arms.items()}


def final_means(records: list[RunRecord], arm: str, step: int, field: str) -> float | None:
    """Mean over ``arm``'s runs of an eval row ``field`` (e.g. ``mean_abs_steer``) at ``step``."""
    values = [
        float(r[field])
        for rec in records
        if rec.arm == arm
        for r in rec.eval_rows()
        if int(r["step"]) == step and r.get(field)
    ]
    return float(np.mean(values)) if values else None
