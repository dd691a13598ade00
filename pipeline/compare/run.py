"""``semore-compare``: run every arm of a study on every seed, then write its results folder.

    semore-compare --config study.yaml --out runs/study [--jobs 2] [--print-commands]

Each run is an independent ``semore-finetune`` process writing ``OUT/runs/ARM/seedS``; a
rerun skips the runs already finished and resumes interrupted ones. ``--print-commands``
prints one command per unfinished run instead (hand them to a cluster's job array), and a
later ``semore-compare --report-only`` aggregates whatever has finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline import cli
from pipeline.compare.config import CompareConfig
from pipeline.compare.report import write_report
from pipeline.config import flatten, load_config
from pipeline.errors import SemoreError
from pipeline.finetune.loop import SUMMARY_NAME
from pipeline.finetune.run import baseline_encoder_flags

log = logging.getLogger(__name__)


@dataclass(eq=False)  # hashed by identity: jobs key per-run results
class Job:
    arm: str
    seed: int
    out: Path
    argv: list[str]  # semore-finetune arguments

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipeline.finetune.run", *self.argv]

    def finished(self, num_train_steps: int) -> bool:
        path = self.out / SUMMARY_NAME
        return path.is_file() and json.loads(path.read_text()).get("step", 0) >= num_train_steps


def _override_flags(overrides: dict) -> list[str]:
    flags = []
    for name, value in flatten(overrides).items():
        flags += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return flags


def plan_jobs(cfg: CompareConfig, out: Path) -> list[Job]:
    """One job per (arm, seed), in seed-major order so partial results cover every arm."""
    jobs = []
    for seed in cfg.seeds:
        for name, arm in cfg.arms.items():
            encoder = [arm.encoder]
            if arm.encoder != "none" and not Path(arm.encoder).is_file():
                raise SemoreError(
                    f"arm {name}: encoder {arm.encoder} not found: expected an export "
                    "(RUN/encoder.pt) or none"
                )
            if arm.encoder == "none" and arm.architecture_from:
                encoder += baseline_encoder_flags(arm.architecture_from)
            run_dir = out / "runs" / name / f"seed{seed}"
            argv = [
                "--config", cfg.finetune, "--encoder", *encoder, "--out", str(run_dir),
                "--seed", str(seed), "--num-train-steps", str(cfg.num_train_steps),
                "--eval_every_steps", str(cfg.eval_every_steps),
                "--num_eval_episodes", str(cfg.num_eval_episodes),
                *_override_flags(cfg.overrides), *_override_flags(arm.overrides),
                "--resume", "--quiet",
            ]  # fmt: skip
            jobs.append(Job(name, seed, run_dir, argv))
    return jobs


def _run_job(job: Job, threads: int) -> tuple[Job, int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("SDL_VIDEODRIVER", "offscreen")
    job.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(job.out.with_suffix(".log"), "a") as handle:
        code = subprocess.run(
            job.command, stdout=handle, stderr=subprocess.STDOUT, env=env
        ).returncode
    return job, code, time.monotonic() - start


def run_jobs(jobs: list[Job], num_jobs: int) -> list[str]:
    """Run ``jobs`` ``num_jobs`` at a time; returns a line per failed job."""
    threads = max(1, (os.cpu_count() or 1) // num_jobs)  # oversubscribed OpenMP threads stall
    log.info("%d runs, %d at a time, %d thread(s) each", len(jobs), num_jobs, threads)
    failures = []
    with ThreadPoolExecutor(num_jobs) as pool:
        for done, (job, code, seconds) in enumerate(
            pool.map(lambda j: _run_job(j, threads), jobs), start=1
        ):
            status = "done" if code == 0 else f"FAILED (exit {code}, see {job.out}.log)"
            log.info(
                "[%d/%d] %s seed %d %s in %.0f s",
                done,
                len(jobs),
                job.arm,
                job.seed,
                status,
                seconds,
            )
            if code != 0:
                failures.append(f"{job.arm} seed {job.seed} (exit {code}, see {job.out}.log)")
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-compare", "Run fine-tuning arms over seeds and report IQMs with intervals."
    )
    parser.add_argument("--config", required=True, help="study YAML (or a compare preset name)")
    parser.add_argument("--out", type=Path, required=True, help="study folder (runs/, report/)")
    parser.add_argument("--report", type=Path, help="results folder (default: OUT/report)")
    parser.add_argument("--jobs", type=cli.positive_int, help="runs at a time on this machine")
    parser.add_argument(
        "--print-commands", action="store_true", help="print one command per unfinished run"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="aggregate the finished runs, run nothing"
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(CompareConfig, args.config, overrides, stage="compare")
    jobs = plan_jobs(cfg, args.out)
    todo = [job for job in jobs if not job.finished(cfg.num_train_steps)]
    if args.print_commands:
        for job in todo:
            print(shlex.join(job.command))
        return
    if todo and not args.report_only:
        failures = run_jobs(todo, args.jobs or cfg.jobs)
        if failures:
            raise SemoreError(f"{len(failures)} run(s) failed: {'; '.join(failures)}")
    finished = [job for job in jobs if job.finished(cfg.num_train_steps)]
    if not finished:
        raise SemoreError(f"no finished runs in {args.out / 'runs'}: expected at least one")
    report = write_report(cfg, finished, args.report or args.out / "report", args.config)
    print(f"{args.out}: {len(finished)}/{len(jobs)} runs finished; results in {report}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
