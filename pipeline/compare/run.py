"""``semore-compare``: run every arm of a study on every seed, then write its results folder.

    semore-compare --config study.yaml --out runs/study [--jobs 2] [--print-commands]

A study with a ``dataset`` section first collects and annotates it into ``OUT/data``, then
pretrains each of its ``encoders`` on it into ``OUT/encoders/NAME`` (N at a time). Each
fine-tuning run is an independent ``semore-finetune`` process writing ``OUT/runs/ARM/seedS``.
A rerun skips what is finished and resumes what was interrupted. ``--print-commands`` prints
one command per unfinished job instead, stage by stage (hand each stage to a cluster's job
array), and a later ``semore-compare --report-only`` aggregates whatever has finished.
``semore-compare --from-results DIR`` rebuilds a results folder's report from the run CSVs and
``study.yaml`` it keeps, when the run folders are gone. A study that spans sessions goes on
from its committed results folder: rerun with the same ``--report`` on a fresh checkout and it
restores the study's encoders from it, checks the rebuilt dataset against it, and runs only
what it does not hold (``pipeline.compare.carry``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from pipeline import cli
from pipeline.compare.carry import carried_records, check_dataset, check_study, restore_encoders
from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import dataset_commands, plan_jobs, pretrain_jobs, run_jobs
from pipeline.compare.records import from_job, from_results
from pipeline.compare.report import write_report
from pipeline.compare.writing import config_label
from pipeline.config import load_config
from pipeline.errors import SemoreError
from pipeline.launch import cli as launch_cli
from pipeline.launch.study import launch_study
from pipeline.lock import FolderLock


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-compare", "Run fine-tuning arms over seeds and report IQMs with intervals."
    )
    parser.add_argument("--config", help="study YAML (or a compare preset name)")
    parser.add_argument("--out", type=Path, help="study folder (runs/, report/)")
    parser.add_argument("--report", type=Path, help="results folder (default: OUT/report)")
    parser.add_argument("--jobs", type=cli.positive_int, help="runs at a time on this machine")
    parser.add_argument(
        "--print-commands", action="store_true", help="print one command per unfinished run"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="aggregate the finished runs, run nothing"
    )
    parser.add_argument(
        "--from-results", type=Path, metavar="DIR",
        help="rebuild the report of results folder DIR from its runs/*.csv and study.yaml",
    )  # fmt: skip
    launch_cli.add_launcher_args(parser)
    return parser


def _dataset_lines(cfg: CompareConfig, out: Path) -> list[str]:
    """``semore-collect ...`` and ``semore-annotate ...``: the study dataset's commands."""
    return [shlex.join(["semore-" + main_fn.__module__.split(".")[1], *argv])
            for main_fn, argv in dataset_commands(cfg, out)]  # fmt: skip


def _print_commands(cfg: CompareConfig, out: Path, report: Path | None) -> None:
    """One line per unfinished job, stage by stage (each stage needs the one before)."""
    restore_encoders(cfg, out, report)  # a kept encoder is copied, not pretrained again
    stages = []
    if cfg.dataset is not None:
        stages.append(("dataset", _dataset_lines(cfg, out)))
    pending = [j for j in pretrain_jobs(cfg, out) if not j.finished(0)]
    stages.append(("encoders", [shlex.join(j.script_command) for j in pending]))
    runs = [j for j in plan_jobs(cfg, out) if not j.finished(cfg.num_train_steps)]
    kept = carried_records(cfg, report, runs)
    runs = [j for j in runs if j not in kept]
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


def _report_from_results(args: argparse.Namespace, overrides: list[str]) -> None:
    """Rebuild a results folder's report from the run CSVs it keeps (the runs may be gone)."""
    folder = args.from_results
    cfg = load_config(CompareConfig, args.config or folder / "study.yaml", overrides, "compare")
    cfg.jobs = args.jobs or cfg.jobs  # how many ran at once: the threads each run had
    order = {arm: i for i, arm in enumerate(cfg.arms)}
    records = sorted(from_results(folder), key=lambda r: (order.get(r.arm, len(order)), r.seed))
    report = write_report(cfg, records, args.report or folder, config_label(args.config or ""))
    print(f"{folder}: report of {len(records)} runs rebuilt in {report}")


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.from_results is not None:
        _report_from_results(args, overrides)
        return
    if args.config is None or args.out is None:
        raise SemoreError("--config and --out are required (unless --from-results DIR)")
    cfg = load_config(CompareConfig, args.config, overrides, stage="compare")
    report_dir = args.report or args.out / "report"
    carry = args.report  # only a named results folder carries a study on (see carry.py)
    check_study(cfg, carry)  # before anything is built for runs it cannot keep
    if args.print_commands:
        _print_commands(cfg, args.out, carry)
        return
    if args.launcher == "slurm" and not args.report_only:
        # no lock here: the cluster's tasks lock what they write (the report task its study)
        if launch_study(cfg, args.out, args.argv, args.wait, carry):
            print(f"{args.out}: study finished; results in {report_dir}")
        return
    with FolderLock(args.out, "compare"):
        _run_locally(args, cfg, report_dir, carry)


def _run_locally(
    args: argparse.Namespace, cfg: CompareConfig, report_dir: Path, carry: Path | None
) -> None:
    """Build the study's inputs, run its unfinished jobs and write its report (or, with
    ``--report-only``, only the report), holding the study folder's lock."""
    num_jobs = args.jobs or cfg.jobs
    if not args.report_only:
        restore_encoders(cfg, args.out, carry)
        build_inputs(cfg, args.out, num_jobs)
    check_dataset(args.out, carry)  # also in a cluster's report task, after its dataset
    jobs = plan_jobs(cfg, args.out)
    unfinished = [job for job in jobs if not job.finished(cfg.num_train_steps)]
    kept = carried_records(cfg, carry, unfinished)
    todo = [job for job in unfinished if job not in kept]
    if todo and not args.report_only:
        failures = run_jobs(todo, num_jobs)
        if failures:
            raise SemoreError(f"{len(failures)} run(s) failed: {'; '.join(failures)}")
    finished = [job for job in jobs if job in kept or job.finished(cfg.num_train_steps)]
    if not finished:
        raise SemoreError(f"no finished runs in {args.out / 'runs'}: expected at least one")
    # The commands as a new user would type them (no --resume: that is this rerun's business).
    setup = [[a for a in j.script_command if a != "--resume"] for j in pretrain_jobs(cfg, args.out)]
    if cfg.dataset is not None:
        setup = [shlex.split(line) for line in _dataset_lines(cfg, args.out)] + setup
    records = [kept.get(job) or from_job(job, cfg.num_train_steps) for job in finished]
    report = write_report(cfg, records, report_dir, config_label(args.config), setup, args.out)
    note = f" ({len(kept)} kept from {report_dir})" if kept else ""
    print(f"{args.out}: {len(finished)}/{len(jobs)} runs finished{note}; results in {report}")


def main(argv: list[str] | None = None) -> int:
    return launch_cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
