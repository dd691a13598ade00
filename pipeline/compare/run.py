"""``semore-compare``: run every arm of a study on every seed, then write its results folder.

    semore-compare --config study.yaml --out runs/study [--jobs 2] [--print-commands]

A study with a ``dataset`` section first collects and annotates it into ``OUT/data``, then
pretrains each of its ``encoders`` on it into ``OUT/encoders/NAME`` (N at a time). Each
fine-tuning run is an independent ``semore-finetune`` process writing ``OUT/runs/ARM/seedS``.
A rerun skips what is finished and resumes what was interrupted: what is left is worked out
once (``pipeline.compare.plan``), and run here, submitted to SLURM (``--launcher slurm``) or,
with ``--print-commands``, printed: one command per unfinished job, stage by stage (hand each
stage to a cluster's job array), then the ``--report-only`` command that aggregates whatever
has finished.
``semore-compare --from-results DIR`` rebuilds a results folder's report from the run CSVs and
``study.yaml`` it keeps, when the run folders are gone. A study that spans sessions goes on
from its committed results folder: rerun with the same ``--report`` on a fresh checkout and it
restores the study's encoders from it, checks the rebuilt dataset against it, and runs only
what it does not hold (``pipeline.compare.carry``).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from pathlib import Path

from pipeline import cli
from pipeline.compare.carry import check_dataset, check_study
from pipeline.compare.config import CompareConfig
from pipeline.compare.continuation import continued
from pipeline.compare.jobs import Command, run_jobs
from pipeline.compare.plan import StudyPlan, plan_study, setup_commands
from pipeline.compare.records import from_job, from_results
from pipeline.compare.report import write_results_folder
from pipeline.compare.results_schema import check_results_folder
from pipeline.compare.slurm import launch_study
from pipeline.compare.writing import config_label
from pipeline.config import load_config
from pipeline.errors import SemoreError
from pipeline.launch import cli as launch_cli
from pipeline.lock import FolderLock
from semore.checks import MAX_PROCESSES


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-compare", "Run fine-tuning arms over seeds and report IQMs with intervals."
    )
    parser.add_argument("--config", help="study YAML (or a compare preset name)")
    parser.add_argument("--out", type=Path, help="study folder (runs/, report/)")
    parser.add_argument("--report", type=Path, help="results folder (default: OUT/report)")
    parser.add_argument(
        "--jobs", type=cli.int_in(1, MAX_PROCESSES), help="runs at a time on this machine"
    )
    parser.add_argument(
        "--print-commands", action="store_true", help="print one command per unfinished run"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="aggregate the finished runs, run nothing"
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="DIR",
        help="rebuild the report of results folder DIR from its runs/*.csv and study.yaml",
    )
    launch_cli.add_launcher_args(parser)
    return parser


def print_plan(plan: StudyPlan) -> None:
    """One line per unfinished command, stage by stage (each stage needs the one before),
    then the command that aggregates what finished."""
    for name, commands in [*plan.stages(), ("report", [plan.report])]:
        lines = [shlex.join(command.script_command) for command in commands]
        if lines:
            print(f"# {name} ({len(lines)})")
            print("\n".join(lines))


def run_in_process(command: Command) -> int:
    """A stage's ``main`` in this process: the dataset stages show their errors as they are."""
    return importlib.import_module(command.module).main(command.argv)


def run_plan(plan: StudyPlan, out: Path, carry: Path | None, num_jobs: int) -> None:
    """Run the plan here: the dataset stages in this process, then the encoders and the runs
    ``num_jobs`` at a time as subprocesses; each resumes what was interrupted."""
    for step in plan.dataset:
        code = run_in_process(step)
        if code != 0:
            raise SemoreError(f"building the study dataset failed: {step.module} exit {code}")
    check_dataset(out, carry)  # the runs the results folder keeps were made on this dataset
    for jobs, what in ((plan.encoders, "pretraining job(s)"), (plan.runs, "run(s)")):
        failures = run_jobs(jobs, num_jobs) if jobs else []
        if failures:
            raise SemoreError(f"{len(failures)} {what} failed: {'; '.join(failures)}")


def _report_from_results(args: argparse.Namespace, overrides: list[str]) -> None:
    """Rebuild a results folder's report from the run CSVs it keeps (the runs may be gone)."""
    folder = args.from_results
    check_results_folder(folder)  # every file it reads, before anything is written
    cfg = load_config(CompareConfig, args.config or folder / "study.yaml", overrides, "compare")
    cfg = continued(cfg, None, folder)  # a continuation's arms as its study.yaml recorded them
    cfg.jobs = args.jobs or cfg.jobs  # how many ran at once: the threads each run had
    order = {arm: i for i, arm in enumerate(cfg.arms)}
    records = sorted(from_results(folder), key=lambda r: (order.get(r.arm, len(order)), r.seed))
    label = config_label(args.config or "")
    report = write_results_folder(cfg, records, args.report or folder, label)
    print(f"{folder}: report of {len(records)} runs rebuilt in {report}")


def _report(cfg: CompareConfig, plan: StudyPlan, args: argparse.Namespace, folder: Path) -> None:
    """The results folder of the plan's finished runs (and those the results folder keeps)."""
    done = [j for j in plan.all_runs if j in plan.kept or j.finished(cfg.num_train_steps)]
    if not done:
        raise SemoreError(f"no finished runs in {args.out / 'runs'}: expected at least one")
    records = [plan.kept.get(job) or from_job(job, cfg.num_train_steps) for job in done]
    setup = setup_commands(cfg, args.out)
    label = config_label(args.config)
    report = write_results_folder(cfg, records, folder, label, setup, args.out)
    note = f" ({len(plan.kept)} kept from {folder})" if plan.kept else ""
    print(f"{args.out}: {len(done)}/{len(plan.all_runs)} runs finished{note}; results in {report}")


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.from_results is not None:
        _report_from_results(args, overrides)
        return
    if args.config is None or args.out is None:
        raise SemoreError("--config and --out are required (unless --from-results DIR)")
    cfg = load_config(CompareConfig, args.config, overrides, stage="compare")
    report_dir = args.report or args.out / "report"
    carry = args.report  # only a named results folder carries a study on (see carry.py)
    cfg = continued(cfg, args.out, carry)  # a continuation: only the arms that go on
    check_study(cfg, carry)  # before anything is built for runs it cannot keep
    if args.print_commands:
        print_plan(plan_study(cfg, args.out, carry, args.argv))
        return
    if args.launcher == "slurm" and not args.report_only:
        # no lock here: the cluster's tasks lock what they write (the report task its study)
        plan = plan_study(cfg, args.out, carry, args.argv)
        if launch_study(plan, cfg, args.out, args.wait):
            print(f"{args.out}: study finished; results in {report_dir}")
        return
    # A report into a folder outside the study only reads it: a finished run never changes
    # (summary.json is written last, atomically), so it needs no lock on a study that may be
    # running, only on the results folder it writes, and it restores nothing into the study.
    reader = args.report_only and not report_dir.resolve().is_relative_to(args.out.resolve())
    with FolderLock(report_dir if reader else args.out, "compare"):
        plan = plan_study(cfg, args.out, carry, args.argv, restore=not reader)
        if args.report_only:
            check_dataset(args.out, carry)  # also in a cluster's report task, after its dataset
        else:
            run_plan(plan, args.out, carry, args.jobs or cfg.jobs)
        _report(cfg, plan, args, report_dir)


def main(argv: list[str] | None = None) -> int:
    return launch_cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
