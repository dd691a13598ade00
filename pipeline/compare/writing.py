"""Words and files of a results folder: the sentences that open table.md, commands.sh without
this machine's paths, and writes that leave an unchanged file alone."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from pipeline.compare.analysis import Analysis
from pipeline.compare.config import CompareConfig
from pipeline.compare.records import RunRecord
from pipeline.config import preset_names, resolve_config
from pipeline.files import atomic_write

# IQM differences smaller than this print as 0.00: no arm is "ahead" by a rounding error.
TIE = 0.005
# Below 3 runs an arm's bootstrap resamples one or two numbers: its interval is no evidence.
MIN_RUNS_FOR_INTERVAL = 3


def write(path: Path, content: str | bytes) -> None:
    """Write ``content`` unless the file already holds it (a rerun changes no file)."""
    data = content.encode() if isinstance(content, str) else content
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write(path, data)


def _reading(low: float, high: float, num_runs: int) -> str:
    if num_runs < MIN_RUNS_FOR_INTERVAL:
        return f"from {num_runs} run(s) per arm at the fewest, too few for the interval to say anything"
    if low > 0.5:
        return "an interval above 0.5: its runs are likely better"
    if high < 0.5:
        return "an interval below 0.5: its runs are likely worse"
    return "an interval that contains 0.5: no clear difference"


def _verdict(ref: str, arm: str, a: Analysis, improvement: dict | None = None) -> str:
    """One sentence: where ``arm`` stands against ``ref`` at the last report step
    (``improvement``: P(arm > ref) per arm, the reference's by default)."""
    step, col = a.report_steps[-1], a.column(a.report_steps[-1])
    mine, theirs = float(a.curves[arm].value[col]), float(a.curves[ref].value[col])
    diff = mine - theirs
    where = "ties with" if abs(diff) < TIE else "is ahead of" if diff > 0 else "is behind"
    by = "" if abs(diff) < TIE else f" by {abs(diff):.2f} IQM"
    poi, low, high = (improvement or a.improvement)[arm].at(-1)
    fewest = min(len(a.scores[arm]), len(a.scores[ref]))
    ahead = [
        s
        for i, s in enumerate(a.report_steps)
        if a.curves[arm].value[a.column(s)] - a.curves[ref].value[a.column(s)] >= TIE
    ]
    return (
        f"At step {step}, {arm} {where} {ref}{by} ({mine:.2f} against {theirs:.2f}); the "
        f"probability that a {arm} run beats a {ref} run is {poi:.2f} [{low:.2f}, "
        f"{high:.2f}], {_reading(low, high, fewest)}. Ahead at {len(ahead)} of "
        f"{len(a.report_steps)} report steps"
        + (f" ({', '.join(map(str, ahead))})." if ahead else ".")
    )


def verdicts(cfg: CompareConfig, a: Analysis) -> list[str]:
    """The sentences that open the report: one per arm against the reference (only the method's
    arms when the baselines are listed), one per arm against each ``also_compare_to`` arm, and
    the learner."""
    ref = a.reference
    judged = [arm for arm in a.scores if arm not in cfg.baseline_arms] or list(a.scores)
    lines = []
    if ref != cfg.reference_arm:
        lines.append(f"- The strongest baseline at step {a.report_steps[-1]} is {ref} (of "
                     f"{', '.join(b for b in cfg.baseline_arms if b in a.scores)}).")  # fmt: skip
    if cfg.continue_best is not None:
        picks = ", ".join(f"{arm} ({iqm:.2f})" for arm, iqm in cfg.continue_best.picked.items())
        lines.append(f"- Continued from step {cfg.continue_best.from_step}: {picks}, the best "
                     "method arm and the strongest baseline there by IQM; the other arms stop.")  # fmt: skip
    lines += [f"- {_verdict(ref, arm, a)}" for arm in judged if arm in a.improvement]
    for other, table in a.also.items():
        lines += [f"- {_verdict(other, arm, a, table)}" for arm in judged if arm in table]
    check = a.learner
    unplanned = [k for k in check.differing if k not in check.on_purpose]
    if unplanned:
        lines.append(
            f"- Not one learner: the arms differ in {', '.join(unplanned)} (the learner "
            "column), so each difference above mixes what the arms are about with the learner."
        )
    if check.on_purpose:
        lines.append(
            f"- The arms differ on purpose (unmatched_ok) in {', '.join(check.on_purpose)}."
        )
    if not lines:
        lines.append(f"- Only the reference arm {ref} has finished runs: nothing to compare.")
    return lines


def config_label(config_arg: str) -> str:
    """The study config as a new user types it: a preset's name, else the results folder's
    own copy ``study.yaml`` (never a path of this machine)."""
    for name in preset_names("compare"):
        if (
            config_arg == name
            or Path(config_arg).resolve() == resolve_config(name, "compare").resolve()
        ):
            return name
    return "study.yaml"


def _portable(arg: str, study: Path) -> str:
    """``arg`` with the study folder as ``$OUT``, paths under the working folder relative to it,
    and paths beside the study (RUN/pretrain of semore-run) relative to ``$OUT``."""
    root = str(study.resolve())
    if arg.startswith(("/", "./")) or os.sep in arg:
        absolute = str(Path(arg).resolve())
        if absolute == root or absolute.startswith(root + os.sep):
            return f'"$OUT{absolute[len(root) :]}"'
        cwd = str(Path.cwd().resolve())
        if absolute.startswith(cwd + os.sep):
            return shlex.quote(os.path.relpath(absolute, cwd))
        if os.path.commonpath([absolute, root]) != os.sep:  # a sibling, e.g. RUN/pretrain
            return f'"$OUT/{os.path.relpath(absolute, root)}"'
    return shlex.quote(arg)


def commands_script(setup: list[list[str]], records: list[RunRecord], study: Path) -> str:
    """commands.sh: the dataset and encoder commands, then one semore-finetune per run."""
    lines = [["semore-finetune", *rec.argv] for rec in records if rec.argv is not None]
    here = os.path.relpath(study.resolve(), Path.cwd().resolve())
    default = here if not here.startswith("..") else study.name
    return (
        "#!/usr/bin/env bash\n# The study's dataset and encoders, then one semore-finetune run "
        "per line. Run from the folder semore-compare ran in; OUT is the study folder.\n"
        f'OUT="${{OUT:-{default}}}"\n'
        + "".join(" ".join(_portable(a, study) for a in cmd) + "\n" for cmd in [*setup, *lines])
    )
