"""Does a ``make quickstart`` run give the committed quickstart results, number for number?

    python benchmarks/check_quickstart.py runs/quickstart [--results benchmarks/results/quickstart]

Compares what the run computed (the probe of the pretrained and of a random encoder, and every
evaluation and training row of the quick comparison's runs) with the committed folder that the
README quotes. Wall-clock columns (``steps_per_s``, ``wall_time_s``) are left out: they are
the machine's, not the run's. The quickstart is deterministic on one machine (fixed seeds, one
thread per run, the pretraining data order seeded per epoch), so on the machine that made the
folder every compared value is equal; on another CPU, float rounding in the convolutions may
differ, and this script then names, per file, the first row and column that differ with both values.
Exit 0 when all match, 1 when something differs, 2 when a file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.finetune.eval import read_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "quickstart"
PROBES = ("probe_pretrained.json", "probe_random.json")
COMPARE_RUNS = Path("compare") / "runs"  # the committed folder's copy of the report's runs/
RUN_REPORT_RUNS = Path("compare") / "report" / "runs"  # where semore-run writes them
PATH_KEYS = frozenset({"data", "encoder"})  # where the probe read from, not what it found
WALL_CLOCK_COLUMNS = frozenset({"steps_per_s", "wall_time_s"})


def _rows(path: Path) -> list[dict[str, str]]:
    """A run's metrics rows (strings, as written) without the wall-clock columns."""
    return [
        {k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS} for row in read_metrics(path)
    ]


def _first_difference(ours: list[dict[str, str]], kept: list[dict[str, str]]) -> str | None:
    if len(ours) != len(kept):
        return f"{len(ours)} rows, committed {len(kept)}"
    for index, (row, kept_row) in enumerate(zip(ours, kept, strict=True)):
        for column, value in kept_row.items():
            if row.get(column) != value:
                return f"row {index + 2}, {column}: {row.get(column)!r}, committed {value!r}"
    return None


def _values(probe: dict) -> dict:
    return {key: value for key, value in probe.items() if key not in PATH_KEYS}


def compare(run_dir: Path, results: Path = RESULTS) -> list[str]:
    """One line per file that differs from the committed folder (empty: all equal).

    Raises FileNotFoundError naming the first missing file."""
    problems: list[str] = []
    for name in PROBES:
        ours, kept = run_dir / name, results / name
        for path in (ours, kept):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (expected the quickstart's probe JSON)")
        # Paths name the run's folder, not a result.
        if _values(json.loads(ours.read_text())) != _values(json.loads(kept.read_text())):
            problems.append(f"{name}: the probe differs from {kept}")
    kept_runs = sorted((results / COMPARE_RUNS).glob("*.csv"))
    if not kept_runs:
        raise FileNotFoundError(
            f"{results / COMPARE_RUNS}: no run CSVs (expected the committed runs)"
        )
    for kept in kept_runs:
        ours = run_dir / RUN_REPORT_RUNS / kept.name
        if not ours.is_file():
            raise FileNotFoundError(
                f"{ours}: missing (expected the quick comparison's run {kept.stem})"
            )
        difference = _first_difference(_rows(ours), _rows(kept))
        if difference is not None:
            problems.append(f"{kept.name}: {difference}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir", type=Path, help="the quickstart's output folder (make quickstart OUT=...)"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the committed results folder"
    )
    args = parser.parse_args(argv)
    try:
        problems = compare(args.run_dir, args.results)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"differs: {line}")
    if not problems:
        runs = len(list((args.results / COMPARE_RUNS).glob("*.csv")))
        print(
            f"{args.run_dir} matches {args.results}: both probes and {runs} runs, value for value"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
