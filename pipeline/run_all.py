"""``semore-run``: every stage in order from one config, resuming what is done, then a report.

collect -> annotate -> pretrain -> a quick comparison of fine-tuning arms (``semore-compare``:
the pretrained encoder frozen against a frozen random encoder on one learner) -> probes
(pretrained, random, and optionally an encoder RL trained end to end) -> ``RUN/report.html``. Each stage is called through its
own ``main`` with the same flags a user would type, and is skipped when its output is
complete, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import cli
from pipeline.annotate import run as annotate_run
from pipeline.collect import run as collect_run
from pipeline.compare import run as compare_run
from pipeline.config import load_config, override_flags, resolve_config
from pipeline.data import schema
from pipeline.errors import SemoreError
from pipeline.inspect.page import MAX_SHOWN_EPISODES
from pipeline.lock import FolderLock
from pipeline.pretrain import probe
from pipeline.pretrain import run as pretrain_run
from pipeline.report import write_run_report
from semore.checks import Int, ListOf, check_fields

log = logging.getLogger(__name__)


@dataclass
class StageSpec:
    """One stage: its YAML config and extra ``--section.field value`` overrides."""

    config: str = ""
    overrides: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    """Each stage's ``config`` is a preset name of that stage or a YAML path (relative to the
    folder semore-run is started in)."""

    collect: StageSpec = field(default_factory=lambda: StageSpec("quickstart"))
    annotate: StageSpec = field(default_factory=lambda: StageSpec("quickstart"))
    pretrain: StageSpec = field(default_factory=lambda: StageSpec("quickstart"))
    # The comparison of fine-tuning arms (a semore-compare preset or YAML; its arms name the
    # encoder pretrained above "pretrained").
    compare: StageSpec = field(default_factory=lambda: StageSpec("quick"))
    # An end-to-end arm whose seed-0 encoder the probe reads as "what RL learned" (e.g.
    # "scratch" in a comparison that has one). None: the quick comparison's arms are frozen,
    # so RL changed no encoder and only the pretrained and a random encoder are probed.
    rl_probe_arm: str | None = None
    # Episodes shown in the report's contact sheet and how many steps of each.
    report_episodes: list[int] = field(default_factory=lambda: [0, 1])
    report_max_steps: int = 12

    def __post_init__(self) -> None:
        check_fields(
            self,
            report_episodes=ListOf(Int(0, schema.MAX_EPISODES - 1), 1, MAX_SHOWN_EPISODES),
            report_max_steps=Int(1, schema.MAX_EPISODE_STEPS),
        )


def _flags(spec: StageSpec, stage: str, root: Path) -> list[str]:
    path = Path(spec.config)
    if not path.is_absolute() and (root / path).is_file():
        path = root / path
    flags = ["--config", str(resolve_config(path, stage))]
    return flags + override_flags(spec.overrides)


def _call(name: str, main, argv: list[str]) -> None:
    log.info("stage %s: %s", name, " ".join(argv))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejected a flag; its message is printed above
        code = exit_.code
    if code != 0:
        raise SemoreError(f"stage {name} failed with exit code {code} (its error is printed above)")


def _pretrained_encoder(cfg: RunConfig, out: Path, root: Path, common: list[str]) -> Path:
    """Collect, annotate and pretrain into ``out``; returns the encoder's export."""
    data = out / "data"
    _call(
        "collect",
        collect_run.main,
        [*_flags(cfg.collect, "collect", root), "--out", str(data), *common],
    )
    _call(
        "annotate",
        annotate_run.main,
        [*_flags(cfg.annotate, "annotate", root), "--data", str(data), *common],
    )
    pre = out / "pretrain"
    encoder = pre / pretrain_run.ENCODER_EXPORT
    if not encoder.is_file():
        last = pre / pretrain_run.CHECKPOINT_DIR / pretrain_run.LAST_CHECKPOINT
        resume = ["--resume"] if last.is_file() else []
        flags = [*_flags(cfg.pretrain, "pretrain", root), "--data", str(data), "--out", str(pre)]
        _call("pretrain", pretrain_run.main, [*flags, *resume, *common])
    return encoder


def _probes(cfg: RunConfig, out: Path, encoder: Path, study: Path, common: list[str]) -> dict:
    """Probe results by label: the pretrained encoder, a random one, and (if named) the
    encoder an end-to-end arm's seed-0 run left; each probe runs once."""
    sources = [("pretrained", str(encoder)), ("random", "random")]
    if cfg.rl_probe_arm is not None:
        rl_encoder = study / "runs" / cfg.rl_probe_arm / "seed0"
        if not rl_encoder.is_dir():
            raise SemoreError(
                f"rl_probe_arm {cfg.rl_probe_arm!r}: {rl_encoder} not found: expected an arm "
                "of the comparison (or rl_probe_arm: null)"
            )
        sources.append((f"RL-trained ({cfg.rl_probe_arm})", str(rl_encoder)))
    probes = {}
    for label, source in sources:
        path = out / f"probe_{label.split()[0].lower()}.json"
        if not path.is_file():
            argv = ["--encoder", source, "--data", str(out / "data"), "--out", str(path)]
            _call(f"probe ({label})", probe.main, [*argv, *common])
        probes[label] = json.loads(path.read_text())
    return probes


def run_pipeline(cfg: RunConfig, out: Path, root: Path, debug: bool = False) -> Path:
    """Run (or resume) every stage into ``out``; returns the report's path."""
    common = ["--debug"] if debug else []
    encoder = _pretrained_encoder(cfg, out, root, common)
    study = out / "compare"
    flags = [*_flags(cfg.compare, "compare", root), "--pretrained", str(encoder)]
    _call("compare", compare_run.main, [*flags, "--out", str(study), *common])
    probes = _probes(cfg, out, encoder, study, common)
    return write_run_report(
        out, out / "data", probes, study / "report", cfg.report_episodes, cfg.report_max_steps
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser("semore-run", "Run the whole Semore pipeline from one config.")
    parser.add_argument("--config", required=True, help="YAML file or preset name, e.g. quickstart")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created or resumed)")
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(RunConfig, args.config, overrides)
    root = Path.cwd()
    with FolderLock(args.out, "run"):
        report = run_pipeline(cfg, args.out, root, debug=args.debug)
    print(f"semore-run: done; report at {report}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
