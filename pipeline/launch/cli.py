"""``--launcher local|slurm`` on the commands that fan out: flags, and a task per slice."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import cli
from pipeline.errors import SemoreError
from pipeline.launch.config import LAUNCHERS, LauncherConfig
from pipeline.launch.submit import Stage, Task, launch

# Under a command's output folder: each task's log, and submitit's scripts and logs.
LOGS_DIR = "logs"
SUBMITIT_DIR = "submitit"

# Flags that a task's command line must not inherit from the submitting one: the launch
# itself, and the slice, which the launcher sets per task. (flag, takes a value)
_LAUNCH_FLAGS = {"--launcher": True, "--wait": False, "--worker-index": True, "--num-workers": True}


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and ``--wait``."""
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: run on this machine (default); slurm: submit to SLURM through submitit "
        "with the config's launcher section",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --launcher slurm: wait for every task and fail on a failed one "
        "(default: submit, print the job ids and return)",
    )


def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    body: Callable[[argparse.Namespace, list[str]], object],
) -> int:
    """:func:`pipeline.cli.run_cli`, keeping the command line as ``args.argv``: a launched
    task runs the same command on a node."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def with_argv(args: argparse.Namespace, overrides: list[str]) -> object:
        args.argv = argv
        return body(args, overrides)

    return cli.run_cli(parser, argv, with_argv)


def task_argv(argv: list[str]) -> list[str]:
    """``argv`` without the launch and slice flags (``--flag V`` and ``--flag=V`` forms)."""
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in _LAUNCH_FLAGS:
            i += 2 if _LAUNCH_FLAGS[name] and "=" not in argv[i] else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def launch_slices(
    args: argparse.Namespace, cfg: LauncherConfig, module: str, out: Path, pending: list[int]
) -> bool:
    """Submit one task per pending slice (``--worker-index i --num-workers N``) as an array.

    Returns True once the tasks have finished (``--wait``, or the local executor), False when
    they were only submitted.
    """
    if args.worker_index is not None:
        raise SemoreError(
            "--worker-index is set per task by --launcher slurm: expected only --num-workers"
        )
    _, num_workers = cli.node_slice(0, args.num_workers)
    name = cli.stage_name(module)
    if not pending:
        print(f"{out}: nothing to {name}: every slice is finished")
        return True
    base = [sys.executable, "-m", module, *task_argv(args.argv)]
    tasks = [
        Task(
            f"{name} worker {i}",
            [*base, "--worker-index", str(i), "--num-workers", str(num_workers)],
            out / LOGS_DIR / f"{name}-worker{i:02d}.log",
            threads=cfg.cpus_per_task,
        )
        for i in pending
    ]
    launch([Stage(name, tasks)], cfg, out / LOGS_DIR / SUBMITIT_DIR, args.wait)
    return args.wait or cfg.cluster == "local"
