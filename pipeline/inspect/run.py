"""``semore-inspect``: the command line of the dataset inspection page."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cli
from pipeline.data import schema
from pipeline.errors import SemoreError
from pipeline.inspect.page import (
    DEFAULT_MAX_STEPS,
    MAX_SHOWN_EPISODES,
    contact_sheet,
    read_episodes,
    write_html,
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-inspect",
        "Write an HTML page / PNG contact sheet of a dataset's steps.",
        config_overrides=False,
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="HTML page to write")
    parser.add_argument(
        "--episodes",
        type=cli.int_in(0, schema.MAX_EPISODES - 1),
        nargs="+",
        help=f"episode indices, at most {MAX_SHOWN_EPISODES} (default: the first two)",
    )
    parser.add_argument(
        "--max-steps",
        type=cli.int_in(1, schema.MAX_EPISODE_STEPS),
        default=DEFAULT_MAX_STEPS,
        help="steps shown per episode",
    )
    parser.add_argument("--png", type=Path, help="also write a PNG contact sheet here")
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.episodes is not None and len(set(args.episodes)) > MAX_SHOWN_EPISODES:
        raise SemoreError(
            f"--episodes names {len(set(args.episodes))} episodes: expected at most "
            f"{MAX_SHOWN_EPISODES} on one page"
        )
    views = read_episodes(args.data, args.episodes, args.max_steps)
    sheet = contact_sheet(views) if args.png is not None else None  # its size is checked first
    write_html(args.data, views, args.out)
    if sheet is not None:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.png)
    steps = sum(len(v.steps) for v in views)
    print(
        f"{args.out}: {len(views)} episodes, {steps} steps"
        + (f"; contact sheet {args.png}" if args.png else "")
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run, config_overrides=False)


if __name__ == "__main__":
    raise SystemExit(main())
