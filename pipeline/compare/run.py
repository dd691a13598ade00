"""``semore-compare``: run every arm of a study on every seed, then write its results folder.

    semore-compare --config study.yaml --out runs/study [--jobs 2] [--print-commands]

A study with a ``dataset`` section first collects and annotates it into ``OUT/data``, then
pretrains each of its ``encoders`` on it into ``OUT/encoders/NAME`` (N at a time). Each
fine-tuning run is an independent ``semore-finetune`` process writing ``OUT/runs/ARM/seedS``.
A rerun skips what is finished and resumes what was interrupted. ``--print-commands`` prints
one command per unfinished job instead, stage by stage (hand each stage to a cluster's job
array), and a later ``semore-compare --report-only`` aggregates whatever has finished.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import cli
from pipeline.compare.config import ENCODER_REF, CompareConfig
from pipeline.compare.report import write_report
from pipeline.config import load_config, override_flags
from pipeline.errors import SemoreError
from pipeline.finetune.loop import SUMMARY_NAME
from pipeline.finetune.run import baseline_encoder_flags
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.run import ENCODER_EXPORT

log = logging.getLogger(__name__)


@dataclass(eq=False)  # hashed by identity: jobs key per-run results
class Job:
    arm: str  # the arm, or the encoder a pretraining job makes
    seed: int
    out: Path
    argv: list[str]  # the stage's arguments
    module: str = "pipeline.finetune.run"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.argv]

    @property
    def script_command(self) -> list[str]:
        """The same job as its console script, for a cluster's job array."""
        script = "semore-pretrain" if self.module == PRETRAIN_MODULE else "semore-finetune"
        return [script, *self.argv]

    def finished(self, num_train_steps: int) -> bool:
        if self.module == PRETRAIN_MODULE:
            return (self.out / ENCODER_EXPORT).is_file()
        path = self.out / SUMMARY_NAME
        return path.is_file() and json.loads(path.read_text()).get("step", 0) >= num_train_steps


PRETRAIN_MODULE = "pipeline.pretrain.run"


def encoder_path(cfg: CompareConfig, ref: str, out: Path) -> str:
    """An arm's encoder reference as a path ("encoders.NAME", "pretrained"), else as given."""
    if ref.startswith(ENCODER_REF):
        return str(out / "encoders" / ref[len(ENCODER_REF) :] / ENCODER_EXPORT)
    return cfg.pretrained if ref == "pretrained" else ref


def dataset_commands(cfg: CompareConfig, out: Path) -> list[tuple[object, list[str]]]:
    """(main, argv) of the collect and annotate stages that build the study's dataset."""
    from pipeline.annotate.run import main as annotate_main
    from pipeline.collect.run import main as collect_main

    data, ds = str(out / "data"), cfg.dataset
    return [
        (collect_main, ["--config", ds.collect, "--out", data, *override_flags(ds.collect_overrides)]),
        (annotate_main, ["--config", ds.annotate, "--data", data, *override_flags(ds.annotate_overrides)]),
    ]  # fmt: skip


def architecture_flags(cfg: CompareConfig, ref: str) -> list[str]:
    """``--encoder.*`` flags that rebuild the architecture of ``ref`` (a study encoder's
    pretrain config, known before it is trained, or an export)."""
    if not ref.startswith(ENCODER_REF):
        return baseline_encoder_flags(encoder_path(cfg, ref, Path()))
    enc = cfg.encoders[ref[len(ENCODER_REF) :]]
    pretrain_cfg = load_config(PretrainConfig, enc.config, enc.overrides, stage="pretrain")
    return override_flags({"encoder": asdict(pretrain_cfg.encoder)})


def pretrain_jobs(cfg: CompareConfig, out: Path) -> list[Job]:
    """One pretraining job per study encoder, on the study's dataset."""
    jobs = []
    for name, enc in cfg.encoders.items():
        run_dir = out / "encoders" / name
        resume = ["--resume"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
        argv = ["--config", enc.config, "--data", str(out / "data"), "--out", str(run_dir),
                *override_flags(enc.overrides), *resume, "--quiet"]  # fmt: skip
        jobs.append(Job(name, 0, run_dir, argv, module=PRETRAIN_MODULE))
    return jobs


def plan_jobs(cfg: CompareConfig, out: Path) -> list[Job]:
    """One job per (arm, seed), in seed-major order so partial results cover every arm."""
    jobs = []
    for seed in cfg.seeds:
        for name, arm in cfg.arms.items():
            encoder = [encoder_path(cfg, arm.encoder, out)]
            own = arm.encoder.startswith(ENCODER_REF)  # made by the study, maybe not yet
            if arm.encoder != "none" and not own and not Path(encoder[0]).is_file():
                raise SemoreError(
                    f"arm {name}: encoder {encoder[0]} not found: expected an export "
                    "(RUN/encoder.pt), encoders.NAME, pretrained or none"
                )
            if arm.encoder == "none" and arm.architecture_from:
                encoder += architecture_flags(cfg, arm.architecture_from)
            run_dir = out / "runs" / name / f"seed{seed}"
            argv = [
                "--config", cfg.finetune, "--encoder", *encoder, "--out", str(run_dir),
                "--seed", str(seed), "--num-train-steps", str(cfg.num_train_steps),
                "--eval_every_steps", str(cfg.eval_every_steps),
                "--num_eval_episodes", str(cfg.num_eval_episodes),
                *override_flags(cfg.overrides), *override_flags(arm.overrides),
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


def _dataset_lines(cfg: CompareConfig, out: Path) -> list[str]:
    """``semore-collect ...`` and ``semore-annotate ...``: the study dataset's commands."""
    return [shlex.join(["semore-" + main_fn.__module__.split(".")[1], *argv])
            for main_fn, argv in dataset_commands(cfg, out)]  # fmt: skip


def _print_commands(cfg: CompareConfig, out: Path) -> None:
    """One line per unfinished job, stage by stage (each stage needs the one before)."""
    stages = []
    if cfg.dataset is not None:
        stages.append(("dataset", _dataset_lines(cfg, out)))
    pending = [j for j in pretrain_jobs(cfg, out) if not j.finished(0)]
    stages.append(("encoders", [shlex.join(j.script_command) for j in pending]))
    runs = [j for j in plan_jobs(cfg, out) if not j.finished(cfg.num_train_steps)]
    stages.append(("fine-tuning runs", [shlex.join(j.script_command) for j in runs]))
    for name, lines in stages:
        if lines:
            print(f"# {name} ({len(lines)})")
            print("\n".join(lines))


def build_inputs(cfg: CompareConfig, out: Path, num_jobs: int) -> None:
    """The study's dataset, then its encoders; each stage resumes or skips what is done."""
    if cfg.dataset is not None:
        for main_fn, argv in dataset_commands(cfg, out):
            code = main_fn([*argv, "--quiet"])
            if code != 0:
                raise SemoreError(
                    f"building the study dataset failed: {main_fn.__module__} exit {code}"
                )
    todo = [job for job in pretrain_jobs(cfg, out) if not job.finished(0)]
    if todo:
        failures = run_jobs(todo, num_jobs)
        if failures:
            raise SemoreError(f"{len(failures)} pretraining job(s) failed: {'; '.join(failures)}")


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(CompareConfig, args.config, overrides, stage="compare")
    if args.print_commands:
        _print_commands(cfg, args.out)
        return
    num_jobs = args.jobs or cfg.jobs
    if not args.report_only:
        build_inputs(cfg, args.out, num_jobs)
    jobs = plan_jobs(cfg, args.out)
    todo = [job for job in jobs if not job.finished(cfg.num_train_steps)]
    if todo and not args.report_only:
        failures = run_jobs(todo, num_jobs)
        if failures:
            raise SemoreError(f"{len(failures)} run(s) failed: {'; '.join(failures)}")
    finished = [job for job in jobs if job.finished(cfg.num_train_steps)]
    if not finished:
        raise SemoreError(f"no finished runs in {args.out / 'runs'}: expected at least one")
    # The commands as a new user would type them (no --resume: that is this rerun's business).
    setup = [
        shlex.join(arg for arg in j.script_command if arg != "--resume")
        for j in pretrain_jobs(cfg, args.out)
    ]
    if cfg.dataset is not None:
        setup = _dataset_lines(cfg, args.out) + setup
    report = write_report(
        cfg, finished, args.report or args.out / "report", args.config, setup, args.out
    )
    print(f"{args.out}: {len(finished)}/{len(jobs)} runs finished; results in {report}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
