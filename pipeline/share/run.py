"""``semore-push``: the command line that publishes a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cli
from pipeline.share import card as cards
from pipeline.share.push import push


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-push",
        "Publish a dataset (shards + generated card) on the Hugging Face Hub.",
        config_overrides=False,
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset folder (semore-collect/annotate output)"
    )
    parser.add_argument(
        "--repo-id",
        required=True,
        help="versioned dataset id ORG/NAME-vN, e.g. semore/highway-quickstart-v1",
    )
    parser.add_argument(
        "--private", action="store_true", default=None, help="create the repo private"
    )
    parser.add_argument("--revision", help="branch to push to (created if missing; default main)")
    parser.add_argument(
        "--local-dir", type=Path, help="write the repo layout to this folder instead (no network)"
    )
    parser.add_argument(
        "--token", help="Hub token (default: $HF_TOKEN or the `hf auth login` token)"
    )
    parser.add_argument(
        "--license", default=cards.DEFAULT_LICENSE, help="Hub license id for the card"
    )
    parser.add_argument(
        "--release", action="store_true", help="also copy the card to datasets_cards/NAME-vN.md"
    )
    parser.add_argument(
        "--cards-dir",
        type=Path,
        help="where --release puts cards (default: the checkout's datasets_cards/)",
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    where = push(
        args.data,
        args.repo_id,
        local_dir=args.local_dir,
        token=args.token,
        private=args.private,
        revision=args.revision,
        license=args.license,
        release=args.release,
        cards_dir=args.cards_dir,
    )
    print(f"{args.repo_id}: published to {where}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run, config_overrides=False)


if __name__ == "__main__":
    raise SystemExit(main())
