"""The schema of a study's results folder, checked before a report or a resumed study reads it.

A results folder (``semore-compare --report DIR``, or a committed ``benchmarks/results/NAME``)
holds ``results.json``, ``study.yaml``, ``dataset.json`` (the dataset's fingerprint),
``runs/ARM-seedS.csv`` (each run's metrics rows) and ``encoders/NAME.pt``. The report
rebuilder and the study that goes on from the folder read them; :func:`check_results_folder`
checks every one of those files before either starts, so a damaged or foreign folder is a
one-line error naming the file, the field, the value and what was expected, and nothing is
built or written for it. ``study.yaml`` is checked as a :class:`CompareConfig` by its loader.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.errors import SemoreError
from semore.checks import (
    MAX_SEED,
    MAX_STEPS,
    AnyValue,
    Bool,
    CheckError,
    Float,
    Int,
    ListOf,
    MapOf,
    Opt,
    Record,
    Spec,
    Str,
)

# File and key names of a results folder.
RESULTS_NAME = "results.json"
STUDY_NAME = "study.yaml"
DATASET_NAME = "dataset.json"
RUNS_DIR = "runs"
RUN_FILE_PATTERN = "*-seed*.csv"
ARMS = "arms"
REFERENCE = "reference"
CPU_S_PER_SEED = "cpu_s_per_seed"
# Columns of a run's metrics rows that the report reads.
PHASE, STEP, WALL_TIME_S, SCORE = "phase", "step", "wall_time_s", "normalized_return"

SEED = Int(0, MAX_SEED)
ESTIMATE = Record({"iqm": Float(), "iqm_low": Float(), "iqm_high": Float()})
ARM = Record(
    {
        "seeds": ListOf(SEED, unique=True),
        "scores": ListOf(ListOf(Float())),
        "curve": ListOf(ESTIMATE),
        "wall_time_s": Float(0.0),
        "cpu_min_per_run": Opt(Float(0.0)),
        "cpu_measured": Bool(),
        CPU_S_PER_SEED: MapOf(Float(0.0), key=Str(pattern=r"\d{1,10}", what="a seed")),
        "learner": MapOf(AnyValue()),
        "improvement": MapOf(ESTIMATE),
        "profile": ListOf(ESTIMATE),
    }
)
RESULTS = Record(
    {
        "steps": ListOf(Int(0, MAX_STEPS)),
        "report_steps": ListOf(Int(0, MAX_STEPS)),
        "bootstrap_reps": Int(1, 10**7),
        "profile_taus": ListOf(Float()),
        "learner_differs_in": ListOf(Str()),
        ARMS: MapOf(ARM),
        REFERENCE: Opt(
            Record(
                {"expert_return": Float(), "random_return": Float(), "eval_seeds": ListOf(SEED)},
                required=("expert_return", "random_return", "eval_seeds"),
            )
        ),
    }
)
_FINGERPRINT = Record({"config_hash": Opt(Str()), "totals": Opt(MapOf(Float()))})
DATASET = Record(
    {
        "manifest_sha256": Str(pattern=r"[0-9a-f]{16,64}", what="a hex sha256"),
        "format_version": Int(0, 10**6),
        "raw": _FINGERPRINT,
        "ann": _FINGERPRINT,
    }
)
# A metrics row as the report reads it; the other columns are carried as text.
ROW = Record(
    {
        PHASE: Str(),
        STEP: Int(0, MAX_STEPS),
        WALL_TIME_S: Float(0.0),
        SCORE: Opt(Float()),
    },
    required=(PHASE, STEP, WALL_TIME_S),
)


def _read_json(path: Path, spec: Spec) -> dict:
    try:
        data = json.loads(path.read_bytes().decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise SemoreError(
            f"{path} is not valid JSON ({type(err).__name__}): expected a file written by "
            "semore-compare"
        ) from None
    try:
        spec.check(data, path.stem)
    except CheckError as err:
        raise SemoreError(f"{path}: {err}") from None
    return data


def read_results(folder: Path) -> dict:
    """``results.json`` of a results folder, checked ({} when there is none)."""
    path = folder / RESULTS_NAME
    if not path.is_file():
        return {}
    results = _read_json(path, RESULTS)
    steps = results.get("steps")
    for arm, entry in results.get(ARMS, {}).items():
        scores, seeds = entry.get("scores"), entry.get("seeds")
        if scores is not None and seeds is not None and len(scores) != len(seeds):
            raise SemoreError(
                f"{path}: arms.{arm}.scores has {len(scores)} rows: expected one per seed "
                f"({len(seeds)})"
            )
        for i, row in enumerate(scores or ()):
            if steps is not None and len(row) != len(steps):
                raise SemoreError(
                    f"{path}: arms.{arm}.scores[{i}] has {len(row)} values: expected one per "
                    f"step ({len(steps)})"
                )
    return results


def read_dataset_fingerprint(folder: Path) -> dict | None:
    """``dataset.json`` of a results folder, checked (None when there is none)."""
    path = folder / DATASET_NAME
    return _read_json(path, DATASET) if path.is_file() else None


def run_name(path: Path) -> tuple[str, int]:
    """``runs/ARM-seedS.csv`` -> (ARM, S); a one-line error for another name."""
    arm, _, seed = path.stem.rpartition("-seed")
    if not arm or not SEED.accepts(int(seed) if seed.isdigit() else None):
        raise SemoreError(
            f"{path} is not named ARM-seedS.csv with a seed in [0, {MAX_SEED}]: expected the "
            "run files semore-compare writes"
        )
    return arm, int(seed)


def check_run_rows(path: Path, text: str) -> None:
    """One-line error naming the file, row and column of the first metrics row the report
    cannot read."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in (PHASE, STEP, WALL_TIME_S) if c not in (reader.fieldnames or ())]
    if missing:
        raise SemoreError(f"{path} has no column {missing[0]!r}: expected a metrics.csv header")
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        typed = {PHASE: row[PHASE], STEP: _int_or_text(row[STEP])}
        typed[WALL_TIME_S] = _float_or_text(row[WALL_TIME_S])
        if row.get(SCORE):
            typed[SCORE] = _float_or_text(row[SCORE])
        try:
            ROW.check(typed, f"line {number}")
        except CheckError as err:
            raise SemoreError(f"{path}: {err}") from None
    if reader.line_num < 2:
        raise SemoreError(f"{path} has no rows: expected a finished run's metrics")


def _int_or_text(text: str | None) -> int | str | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


def _float_or_text(text: str | None) -> float | str | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def check_results_folder(folder: Path) -> None:
    """Check every file of a results folder that a report or a resumed study reads."""
    read_results(folder)
    read_dataset_fingerprint(folder)
    for path in sorted((folder / RUNS_DIR).glob(RUN_FILE_PATTERN)):
        run_name(path)
        check_run_rows(path, path.read_bytes().decode(errors="replace"))
