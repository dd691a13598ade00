"""Linear probes of a study's encoders, side by side: every encoder `semore-compare` pretrained,
a frozen random encoder, and the encoder a from-scratch SAC agent ended its RL run with.

    python benchmarks/probe_study.py --study runs/study --out benchmarks/results/study

Each column is one `semore-probe` on the study's dataset (held-out episodes, the
pretraining split), so every encoder is scored on the same samples. Writes `probe.md`
(R² with 95% episode-bootstrap intervals), `probe.json` and the commands it ran.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.files import atomic_write  # noqa: E402
from pipeline.pretrain.probe import main as probe_main  # noqa: E402
from pipeline.pretrain.run import ENCODER_EXPORT  # noqa: E402


def probe_columns(study: Path, rl_arm: str, rl_seed: int) -> dict[str, str]:
    """Column label -> the ``--encoder`` value semore-probe reads."""
    columns = {
        enc.name: str(enc / ENCODER_EXPORT)
        for enc in sorted((study / "encoders").iterdir())
        if (enc / ENCODER_EXPORT).is_file()
    }
    columns["random"] = "random"
    rl_run = study / "runs" / rl_arm / f"seed{rl_seed}"
    if (rl_run / "checkpoints" / "last.pt").is_file():
        columns[f"RL-trained ({rl_arm} seed {rl_seed})"] = str(rl_run)
    return columns


def markdown(results: dict[str, dict]) -> str:
    labels = list(results)
    targets = list(next(iter(results.values()))["r2"])
    lines = [
        "| target | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for target in targets:
        cells = []
        for label in labels:
            value = results[label]["r2"][target]
            low, high = results[label]["r2_interval"][target] or (float("nan"),) * 2
            cells.append("n/a" if value is None else f"{value:.2f} [{low:.2f}, {high:.2f}]")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_into(encoder: str, data: Path, path: Path, commands: list[str]) -> dict | None:
    """``semore-probe`` of ``encoder`` on ``data`` into ``path`` (kept when it is already
    there), its command appended to ``commands``; the results, or None if the probe failed."""
    argv = ["--encoder", encoder, "--data", str(data), "--out", str(path), "--quiet"]
    commands.append(shlex.join(["semore-probe", *argv]))
    if not path.is_file() and probe_main(argv) != 0:
        return None
    return json.loads(path.read_text())


def heldout_sample(results: dict[str, dict]) -> str:
    """'the N held-out episodes, M samples' the probes were scored on (the same for all)."""
    held = next(iter(results.values()))
    return (
        f"the {len(held['heldout_episodes'])} held-out episodes, "
        f"{held['num_heldout_samples']} samples"
    )


def write_tables(
    folder: Path, stem: str, header: str, results: dict[str, dict], commands: list[str]
) -> None:
    """``STEM.md`` (``header`` and the R² table), ``STEM.json`` and ``STEM_commands.sh``."""
    table = markdown(results)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{stem}.md", header + table + "\n")
    atomic_write(folder / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    atomic_write(folder / f"{stem}_commands.sh", "\n".join(commands) + "\n")
    print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a semore-compare --out folder")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--rl-arm", default="scratch", help="arm whose RL-trained encoder to probe")
    parser.add_argument("--rl-seed", type=int, default=0)
    args = parser.parse_args()
    data = args.study / "data"
    args.out.mkdir(parents=True, exist_ok=True)
    results, commands = {}, []
    for label, encoder in probe_columns(args.study, args.rl_arm, args.rl_seed).items():
        path = args.out / "probe" / f"{label.split()[0]}.json"
        results[label] = probe_into(encoder, data, path, commands)
        if results[label] is None:
            print(f"probe of {label} failed", file=sys.stderr)
            return 1
    header = (
        "# Linear probe of the study's encoders\n\n"
        f"Held-out R² of a ridge probe from the 50-d features h RL reads, with a 95% interval "
        f"(bootstrap over {heldout_sample(results)}) of `{data}`.\n\n"
    )
    write_tables(args.out, "probe", header, results, commands)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
