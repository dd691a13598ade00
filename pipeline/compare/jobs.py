"""The jobs of a study and the local runner: one ``Job`` per pretraining encoder and per
(arm, seed) fine-tuning run, planned from the study config; ``run_jobs`` runs them as
subprocesses on this machine (``pipeline.compare.plan`` says which are left to run)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.cli import script_name, stage_name
from pipeline.compare.config import ENCODER_REF, CompareConfig
from pipeline.config import load_config, override_flags
from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from pipeline.finetune.eval import SUMMARY_NAME
from pipeline.finetune.run import baseline_encoder_flags
from pipeline.launch.submit import task_env
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.run import ENCODER_EXPORT

log = logging.getLogger(__name__)

PRETRAIN_MODULE = "pipeline.pretrain.run"
FINETUNE_MODULE = "pipeline.finetune.run"


@dataclass(eq=False)  # hashed by identity: jobs key per-run results
class Command:
    """One stage command of a study: the stage's module and its arguments."""

    module: str  # pipeline.collect.run, ...
    argv: list[str]

    @property
    def stage(self) -> str:
        return stage_name(self.module)

    @property
    def command(self) -> list[str]:
        """The command as this Python runs it (the local runner, a SLURM task)."""
        return [sys.executable, "-m", self.module, *self.argv]

    @property
    def script_command(self) -> list[str]:
        """The same command as its console script, as a user types it."""
        return [script_name(self.module), *self.argv]


@dataclass(eq=False)
class Job(Command):
    """A pretraining job (``arm`` is the encoder it makes) or a fine-tuning run."""

    arm: str = ""  # the arm, or the encoder a pretraining job makes
    seed: int = 0
    out: Path = Path()  # the run (or encoder) folder; its log is OUT.log beside it

    def finished(self, num_train_steps: int) -> bool:
        if self.module == PRETRAIN_MODULE:
            return (self.out / ENCODER_EXPORT).is_file()
        path = self.out / SUMMARY_NAME
        return path.is_file() and json.loads(path.read_text()).get("step", 0) >= num_train_steps


def encoder_path(cfg: CompareConfig, ref: str, out: Path) -> str:
    """An arm's encoder reference as a path ("encoders.NAME", "pretrained"), else as given."""
    if ref.startswith(ENCODER_REF):
        return str(out / "encoders" / ref[len(ENCODER_REF) :] / ENCODER_EXPORT)
    return cfg.pretrained if ref == "pretrained" else ref


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
        jobs.append(Job(PRETRAIN_MODULE, argv, arm=name, out=run_dir))
    return jobs


def finetune_jobs(cfg: CompareConfig, out: Path) -> list[Job]:
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
                "--shared-reference", str(out / "reference"), "--resume", "--quiet",
            ]  # fmt: skip
            jobs.append(Job(FINETUNE_MODULE, argv, arm=name, seed=seed, out=run_dir))
    return jobs


def threads_per_job(num_jobs: int, num_todo: int) -> int:
    """Cores per job when ``num_jobs`` of ``num_todo`` jobs run at once: a batch smaller than
    ``num_jobs`` (one pretraining job, say) shares every core among the jobs it has, and no
    more than that, because oversubscribed OpenMP threads stall."""
    return max(1, (os.cpu_count() or 1) // max(1, min(num_jobs, num_todo)))


def cost_path(job: Job) -> Path:
    """``RUN.cost.json`` beside the run folder: the CPU time its processes used, in all."""
    return job.out.with_suffix(".cost.json")


def _add_cost(job: Job, cpu_s: float, wall_s: float, threads: int) -> None:
    """Add one process's CPU and wall seconds to the job's totals (a resume adds to them)."""
    path = cost_path(job)
    total = json.loads(path.read_text()) if path.is_file() else {"cpu_s": 0.0, "wall_s": 0.0}
    total = {
        "cpu_s": total["cpu_s"] + cpu_s,
        "wall_s": total["wall_s"] + wall_s,
        "threads": threads,
    }
    atomic_write(path, json.dumps(total, indent=1) + "\n")


def _run_job(job: Job, threads: int) -> tuple[Job, int, float]:
    env = task_env(threads)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(job.out.with_suffix(".log"), "a") as handle:
        proc = subprocess.Popen(job.command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        # wait4: this child's own CPU time (user + system), even with other jobs running.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    _add_cost(job, usage.ru_utime + usage.ru_stime, seconds, threads)
    return job, code, seconds


def run_jobs(jobs: list[Job], num_jobs: int) -> list[str]:
    """Run ``jobs`` ``num_jobs`` at a time; returns a line per failed job."""
    threads = threads_per_job(num_jobs, len(jobs))
    log.info("%d runs, %d at a time, %d thread(s) each", len(jobs), num_jobs, threads)
    failures = []
    with ThreadPoolExecutor(num_jobs) as pool:
        # Started in the plan's order; reported as each ends, so a 2-hour run at the head of
        # the queue does not hold back the lines of the short runs that end beside it.
        futures = [pool.submit(_run_job, job, threads) for job in jobs]
        for done, future in enumerate(as_completed(futures), start=1):
            job, code, seconds = future.result()
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
