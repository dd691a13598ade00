"""Does average-pooling the trunk's feature map to a small token grid cost lateral precision?

    python benchmarks/pooling.py --data runs/regimes_10k/data --work runs/pooling \
        --out benchmarks/results/pooling [--max-tokens 16 64 144] [--existing 64=PATH]

For each ``--max-tokens`` value, Semore is pretrained on ``--data`` with the quickstart
pretrain preset and ``--encoder.max_tokens N`` (the 35x35 trunk map of an 84 px frame is
pooled to 4x4, 8x8 or 12x12 tokens), then linearly probed on the dataset's held-out episodes.
Everything else (data, steps, seed, losses) is the same, so the columns differ only in the
grid. ``--existing N=PATH`` reuses an export already pretrained that way. Writes
``pooling.md`` (R² with 95% episode-bootstrap intervals), ``pooling.json`` and the commands.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.probe_study import heldout_sample, probe_into, write_tables  # noqa: E402
from pipeline.pretrain.run import ENCODER_EXPORT  # noqa: E402
from pipeline.pretrain.run import main as pretrain_main  # noqa: E402
from semore.encoder import load_encoder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an annotated dataset")
    parser.add_argument("--work", type=Path, required=True, help="pretraining runs and probes")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[16, 64, 144])
    parser.add_argument(
        "--existing", nargs="*", default=[], help="N=PATH: an export pretrained with max_tokens N"
    )
    parser.add_argument("--config", default="quickstart", help="pretrain preset or YAML")
    args = parser.parse_args()
    existing = {int(k): v for k, v in (item.split("=", 1) for item in args.existing)}
    results, commands = {}, []
    for max_tokens in args.max_tokens:
        run_dir = args.work / f"tokens{max_tokens}"
        export = Path(existing.get(max_tokens, run_dir / ENCODER_EXPORT))
        pretrain = ["--config", args.config, "--data", str(args.data), "--out", str(run_dir),
                    "--encoder.max_tokens", str(max_tokens), "--quiet"]  # fmt: skip
        if max_tokens in existing:
            commands.append(f"# max_tokens {max_tokens}: the existing export {export}")
        else:
            commands.append(shlex.join(["semore-pretrain", *pretrain]))
        if not export.is_file() and pretrain_main(pretrain) != 0:
            print(f"pretraining with max_tokens {max_tokens} failed", file=sys.stderr)
            return 1
        rows, cols = load_encoder(export).grid
        if rows * cols > max_tokens:
            print(f"{export} has a {rows}x{cols} grid: expected <= {max_tokens}", file=sys.stderr)
            return 1
        path = args.work / "probe" / f"tokens{max_tokens}.json"
        label = f"{rows}x{cols} tokens"
        results[label] = probe_into(str(export), args.data, path, commands)
        if results[label] is None:
            print(f"probe of max_tokens {max_tokens} failed", file=sys.stderr)
            return 1
    header = (
        "# Token-grid pooling and what a linear probe reads from h\n\n"
        f"Semore pretrained on `{args.data}` with the `{args.config}` preset, differing only in "
        "`encoder.max_tokens` (the token grid the 35x35 trunk map is average-pooled to). "
        f"Held-out R² of a ridge probe from the 50-d h, with a 95% interval (bootstrap over "
        f"{heldout_sample(results)}).\n\n"
    )
    write_tables(args.out, "pooling", header, results, commands)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
