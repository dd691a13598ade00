"""Pretrained encoder vs from-scratch baseline: SAC fine-tuning curves over several seeds.

    python benchmarks/rl_compare.py --encoder RUN/encoder.pt \
        --config pipeline/presets/finetune/quickstart.yaml --seeds 0 1 2 --num-train-steps 1500 \
        --out benchmarks/out/rl_compare [--jobs 2] [--section.field VALUE ...]

Runs ``semore-finetune`` twice per seed (``--encoder RUN/encoder.pt`` and ``--encoder
none`` with the export's EncoderConfig, so both agents have the identical architecture),
``--jobs`` subprocesses at a time, each with ``--resume`` so a rerun continues or skips
finished runs. Writes OUT/table.md (mean +- std over seeds of the eval return and
distance at every evaluation step; printed too), OUT/curves.png (mean curves with std
bands) and OUT/results.json; run folders are OUT/runs/{pretrained,baseline}-seed{S}.
Extra ``--section.field VALUE`` arguments are passed to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.finetune.eval import Curve, plot_curves, read_metrics
from pipeline.finetune.run import baseline_encoder_flags
from semore.encoder import load_encoder_metadata

KINDS = ("pretrained", "baseline")
METRICS = (("episode_return", "eval return"), ("distance_m", "eval distance (m)"))


def run_one(cmd: list[str], log_path: Path, threads: int) -> tuple[float, int]:
    """Run one finetune subprocess; (seconds, exit code)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("SDL_VIDEODRIVER", "offscreen")
    start = time.monotonic()
    with open(log_path, "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return time.monotonic() - start, code


def eval_curves(run_dir: Path, max_step: int) -> dict[int, dict[str, float]]:
    rows = read_metrics(run_dir / "metrics.csv")
    return {
        int(r["step"]): {key: float(r[key]) for key, _ in METRICS}
        for r in rows
        if r["phase"] == "eval" and int(r["step"]) <= max_step
    }


def aggregate(curves: dict[str, list[dict]], key: str) -> tuple[list[int], dict]:
    """Steps evaluated in every run, and per kind the (mean, std) arrays over seeds."""
    steps = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    stats = {}
    for kind, runs in curves.items():
        values = np.array([[c[s][key] for s in steps] for c in runs])  # (seeds, steps)
        stats[kind] = (values.mean(0), values.std(0))
    return steps, stats


def first_reaching(steps: list[int], mean: np.ndarray, target: float) -> int | None:
    hits = [s for s, m in zip(steps, mean, strict=True) if m >= target]
    return hits[0] if hits else None


def encoder_provenance(export: Path) -> str:
    """The command and data that made an export (not its path, which is machine-specific)."""
    meta = load_encoder_metadata(export)
    command = meta.get("command", "semore-pretrain (command not recorded)")
    dataset = meta.get("dataset", {})
    return (
        f"`{command}` (step {meta.get('global_step', '?')}, dataset manifest sha256 "
        f"{dataset.get('manifest_sha256', '?')}, {dataset.get('num_samples', '?')} samples)"
    )


def write_table(args, steps, stats, wall: dict[str, list[float]]) -> str:
    ret, dist = stats["episode_return"], stats["distance_m"]
    lines = [
        f"# Pretrained vs from-scratch SAC ({len(args.seeds)} seeds: {' '.join(map(str, args.seeds))})",
        "",
        f"encoder: {encoder_provenance(args.encoder)}; config `{args.config}`, "
        f"{args.num_train_steps} agent steps; "
        "mean ± std over seeds of the deterministic evaluation.",
        "",
        "| step | return pretrained | return baseline | distance (m) pretrained | distance (m) baseline |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, step in enumerate(steps):
        cells = [
            f"{m[i]:.1f} ± {s[i]:.1f}"
            for m, s in (*(ret[k] for k in KINDS), *(dist[k] for k in KINDS))
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    target = float(ret["baseline"][0][-1])
    reached = first_reaching(steps, ret["pretrained"][0], target)
    lines += [
        "",
        f"Baseline final mean return {target:.1f}: the pretrained mean first reaches it at "
        + (f"step {reached}." if reached is not None else "no evaluated step."),
        "",
        "Training wall time per run (s): "
        + ", ".join(f"{k} {np.mean(v):.0f} ± {np.std(v):.0f}" for k, v in wall.items()),
    ]
    return "\n".join(lines) + "\n"


def plot(steps, stats, path: Path) -> None:
    bands = {
        k: {key: (m - sd, m + sd) for key, (m, sd) in ((key, stats[key][k]) for key, _ in METRICS)}
        for k in KINDS
    }
    curves = {
        kind: Curve(
            np.asarray(steps), {key: stats[key][kind][0] for key, _ in METRICS}, bands[kind]
        )
        for kind in KINDS
    }
    plot_curves(curves, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", type=Path, required=True, help="pretrained export")
    parser.add_argument("--config", type=Path, required=True, help="finetune YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-train-steps", type=int, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/rl_compare"))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args, extra = parser.parse_known_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = args.out / "runs"
    runs_dir.mkdir(exist_ok=True)
    common = ["--config", str(args.config), "--num-train-steps", str(args.num_train_steps)]
    sources = {
        "pretrained": [str(args.encoder)],
        "baseline": ["none", *baseline_encoder_flags(args.encoder)],
    }
    jobs = []
    for seed in args.seeds:
        for kind in KINDS:
            run_dir = runs_dir / f"{kind}-seed{seed}"
            cmd = [sys.executable, "-m", "pipeline.finetune.run", *common, "--seed", str(seed),
                   "--out", str(run_dir), "--resume", "--encoder", *sources[kind], *extra]  # fmt: skip
            jobs.append((kind, seed, run_dir, cmd))
    # Each run gets an equal share of the cores; oversubscribed OpenMP threads stall.
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(jobs)} runs, {args.jobs} at a time, {threads} thread(s) each; logs in {runs_dir}")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(
            pool.map(lambda job: run_one(job[3], job[2].with_suffix(".log"), threads), jobs)
        )
    wall: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for (kind, seed, run_dir, _), (_seconds, code) in zip(jobs, results, strict=True):
        if code != 0:
            tail = run_dir.with_suffix(".log").read_text().strip().splitlines()[-1:]
            print(f"{kind} seed {seed} failed (exit {code}): {' '.join(tail)}", file=sys.stderr)
            return 1
        # The run's own training time, accumulated over resumes (process start-up excluded).
        wall[kind].append(json.loads((run_dir / "summary.json").read_text())["wall_time_s"])

    curves = {
        kind: [eval_curves(d, args.num_train_steps) for k, _, d, _ in jobs if k == kind]
        for kind in KINDS
    }
    stats = {}
    for key, _ in METRICS:
        steps, stats[key] = aggregate(curves, key)
    table = write_table(args, steps, stats, wall)
    (args.out / "table.md").write_text(table)
    plot(steps, stats, args.out / "curves.png")
    results_json = {
        "steps": steps,
        **{
            f"{key}_{kind}_{stat}": stats[key][kind][i].tolist()
            for key, _ in METRICS
            for kind in KINDS
            for i, stat in enumerate(("mean", "std"))
        },
        "seeds": args.seeds,
        "wall_time_s": wall,
    }
    (args.out / "results.json").write_text(json.dumps(results_json, indent=2) + "\n")
    print(table)
    print(f"wrote {args.out / 'table.md'} and {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
