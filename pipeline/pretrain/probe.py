"""``semore-probe``: linear probe of a frozen encoder on held-out episodes.

Features h are computed for every sample of the raw shards (frame stacks rebuilt within
episodes; annotations are not needed). A ridge regression per target is fitted on the
training episodes and scored (R²) on the held-out episodes, with the same episode split
as pretraining (``episode % holdout_every == holdout_every - 1`` is held out), so the
probe is scored on episodes the encoder never trained on.

Targets: ego speed (m/s), lead distance (m; no lead vehicle and leads beyond
``schema.LEAD_RANGE_M`` = 100 m both read as 100 m), lane index, the lateral offset from the
lane centre (m), the heading error to the lane (rad), and the step's reward. Each R² comes
with a 95% interval from a bootstrap over held-out episodes (the unit that is independent).

``--encoder`` is an export (RUN/encoder.pt), ``random`` (a fresh encoder, fixed seed), or a
``semore-finetune`` run (its folder or ``checkpoints/last.pt``): the encoder as RL left it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch import nn

from pipeline import cli, memory
from pipeline.data import schema
from pipeline.data.checkpoint import (
    LAST_CHECKPOINT,
    checkpoint_encoder,
    last_checkpoint,
    read_checkpoint,
)
from pipeline.data.source import iter_pairs, read_dataset_info, shard_urls
from pipeline.data.windows import Collate, EpisodeSplit, iter_windows
from pipeline.errors import SemoreError, first_line
from pipeline.files import atomic_write
from semore.checks import MAX_BATCH, MAX_STEPS, AnyValue, CheckError, Int, MapOf, Record, Str
from semore.encoder import MAX_FRAME_STACK, EncoderConfig, SemoreEncoder, load_export
from semore.export_schema import WEIGHTS
from semore.probe import RidgeProbe, episode_bootstrap_r2, select_alpha

log = logging.getLogger(__name__)

# (reported name, batch field): the probe's targets, in report order.
PROBE_TARGETS = (
    ("speed", "speed_mps"),
    ("lead_distance", "lead_distance_m"),
    ("lane", "lane_index"),
    ("lateral_offset", "lateral_offset_m"),
    ("heading", "heading_rad"),
    ("reward", "reward"),
)
# Same default as pretraining's data.holdout_every, so a random-encoder baseline is
# scored on the same episodes as a pretrained one.
DEFAULT_HOLDOUT_EVERY = 4
# Fixed seed of the "random" encoder baseline, so its numbers are reproducible.
RANDOM_ENCODER_SEED = 0


def random_encoder(data_dir: str | Path, frame_stack: int = 3) -> SemoreEncoder:
    """A freshly initialised encoder (default EncoderConfig) sized for the dataset's frames."""
    info = read_dataset_info(data_dir, with_ann=False)
    cfg = EncoderConfig(
        frame_stack=frame_stack, image_height=info.image_height, image_width=info.image_width
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_ENCODER_SEED)
        return SemoreEncoder.from_config(cfg)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    data_dir: str | Path,
    frame_stack: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """h (N, D) for every sample, with the probe targets and episode ids, in shard order."""
    info = read_dataset_info(data_dir, with_ann=False)
    encoder = encoder.to(device).eval()
    collate = Collate()
    chunks: dict[str, list[torch.Tensor]] = {}

    def flush(samples: list[dict]) -> None:
        batch = collate(samples)
        batch["h"] = encoder(batch["obs"].to(device)).float().cpu()  # (B, D)
        for name in ["h", "episode", *(field for _, field in PROBE_TARGETS)]:
            chunks.setdefault(name, []).append(batch[name])

    samples: list[dict] = []
    for raw_url, _ in shard_urls(data_dir, with_ann=False):
        windows = iter_windows(
            iter_pairs(raw_url, None),
            frame_stack,
            image_hw=(info.image_height, info.image_width),
            where=f"{raw_url}: ",
        )
        for sample in windows:
            samples.append(sample)
            if len(samples) == batch_size:
                flush(samples)
                samples = []
    if samples:
        flush(samples)
    return {name: torch.cat(values) for name, values in chunks.items()}


def run_probe(
    encoder: nn.Module,
    data_dir: str | Path,
    frame_stack: int | None = None,
    holdout_every: int = DEFAULT_HOLDOUT_EVERY,
    batch_size: int = 256,
    alpha: float | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Fit ridge probes from h on training episodes; R² per target on held-out episodes.

    ``encoder`` maps uint8 (B, 3K, H, W) to (B, D); ``frame_stack`` defaults to its
    ``config.frame_stack``. A target missing from the state (NaN) is skipped row-wise.
    ``alpha=None`` picks each target's ridge penalty by cross-validation over the training
    episodes (never the held-out ones), so every encoder gets its best linear read-out.
    """
    if frame_stack is None:
        frame_stack = encoder.config.frame_stack
    if holdout_every < 2:
        raise SemoreError(f"holdout_every is {holdout_every}: expected an int >= 2")
    features = extract_features(encoder, data_dir, frame_stack, batch_size, device)
    split = EpisodeSplit(holdout_every)
    episodes = features["episode"].tolist()
    heldout = torch.tensor([split.is_heldout(e) for e in episodes])
    heldout_episodes = sorted(
        {e for e, held in zip(episodes, heldout.tolist(), strict=True) if held}
    )
    train_episodes = sorted(set(episodes) - set(heldout_episodes))
    if not heldout_episodes or not train_episodes:
        raise SemoreError(
            f"{data_dir} has episodes {sorted(set(episodes))}: expected some held out "
            f"(episode % {holdout_every} == {holdout_every - 1}) and some to train on"
        )
    h = features["h"]
    r2, intervals, alphas = _fit_targets(features, heldout, alpha)
    return {
        "r2": r2,
        "r2_interval": intervals,
        "heldout_episodes": heldout_episodes,
        "num_train_episodes": len(train_episodes),
        "num_train_samples": int((~heldout).sum()),
        "num_heldout_samples": int(heldout.sum()),
        "holdout_every": holdout_every,
        "alpha": alphas,
        "repr_dim": int(h.shape[1]),
        "lead_distance_cap_m": schema.LEAD_RANGE_M,
    }


def _fit_targets(
    features: dict[str, torch.Tensor], heldout: torch.Tensor, alpha: float | None
) -> tuple[dict[str, float | None], dict[str, list[float] | None], dict[str, float | None]]:
    """Per target of PROBE_TARGETS: the held-out R², its episode-bootstrap interval and the
    ridge penalty (None for a target with too few recorded values)."""
    h = features["h"]
    r2: dict[str, float | None] = {}
    intervals: dict[str, list[float] | None] = {}
    alphas: dict[str, float | None] = {}
    episode_ids = features["episode"]
    for name, field in PROBE_TARGETS:
        target = features[field].double()
        valid = torch.isfinite(target)
        fit_rows, test_rows = valid & ~heldout, valid & heldout
        if fit_rows.sum() < 2 or test_rows.sum() < 1:
            log.warning("probe target %s has too few recorded values; skipped", name)
            r2[name] = alphas[name] = intervals[name] = None
            continue
        chosen = alpha
        if chosen is None:
            chosen = select_alpha(h[fit_rows], target[fit_rows], episode_ids[fit_rows])
        probe = RidgeProbe(chosen).fit(h[fit_rows], target[fit_rows])
        r2[name] = float(probe.score(h[test_rows], target[test_rows])[0])
        predicted = probe.predict(h[test_rows]).reshape(-1).double()
        intervals[name] = episode_bootstrap_r2(target[test_rows], predicted, episode_ids[test_rows])
        alphas[name] = chosen
    return r2, intervals, alphas


def summary_line(result: dict) -> str:
    scores = " ".join(
        f"{name}={'n/a' if value is None else f'{value:.2f}'}"
        for name, value in result["r2"].items()
    )
    return (
        f"probe: {scores} (held-out episodes: {len(result['heldout_episodes'])}, "
        f"samples: {result['num_heldout_samples']})"
    )


def format_table(result: dict) -> str:
    lines = [f"{'target':<16}{'R2 held-out':>12}  95% interval (episode bootstrap)"]
    for name, value in result["r2"].items():
        interval = (result.get("r2_interval") or {}).get(name)
        band = f"  [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        lines.append(f"{name:<16}{'n/a' if value is None else f'{value:.3f}':>12}{band}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-probe",
        "Linear probe of a frozen encoder on held-out episodes.",
        config_overrides=False,
    )
    parser.add_argument(
        "--encoder",
        required=True,
        help="an exported encoder (RUN/encoder.pt) or 'random' for the baseline",
    )
    parser.add_argument(
        "--data", required=True, help="dataset folder, or hf://datasets/ORG/NAME[@REVISION]"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--batch-size", type=cli.int_in(1, MAX_BATCH), default=256)
    parser.add_argument(
        "--holdout-every",
        type=cli.int_in(2, schema.MAX_EPISODES),
        default=None,
        help="held-out episode rule (default: the encoder's pretraining value, else 4)",
    )
    parser.add_argument(
        "--frame-stack",
        type=cli.int_in(1, MAX_FRAME_STACK),
        default=3,
        help="frames per input of the random encoder",
    )
    parser.add_argument(
        "--alpha",
        type=cli.float_in(0.0, 1e12, low_open=True),
        default=None,
        help="ridge penalty on standardised h (default: chosen per target by cross-validation "
        "over the training episodes)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def load_probe_encoder(spec: str, data_dir: str | Path, frame_stack: int) -> tuple[nn.Module, dict]:
    """``random``, an export path, or a fine-tuning run -> (encoder, metadata)."""
    if spec == "random":
        return random_encoder(data_dir, frame_stack), {}
    path = Path(spec)
    if path.is_dir():
        path = last_checkpoint(path)
    if path.suffix == ".pt" and path.name == LAST_CHECKPOINT:
        return finetuned_encoder(path)
    try:
        return load_export(spec)
    except ValueError as err:  # names the file, the field and what was expected
        raise SemoreError(str(err)) from None


# What the probe reads of a semore-finetune checkpoint, checked before a model is built.
FINETUNE_CHECKPOINT = Record(
    {
        "format": Str(choices=("semore-finetune",)),
        "encoder_config": MapOf(AnyValue()),
        "agent": Record({"agent": WEIGHTS}, required=("agent",)),
        "step": Int(0, MAX_STEPS),
        "encoder_source": Str(),
    },
    required=("format", "encoder_config", "agent", "step", "encoder_source"),
)


def finetuned_encoder(checkpoint_path: Path) -> tuple[nn.Module, dict]:
    """The encoder of a ``semore-finetune`` checkpoint, as RL left it."""
    checkpoint = read_checkpoint(checkpoint_path)
    try:
        FINETUNE_CHECKPOINT.check(checkpoint, "checkpoint")
        encoder = checkpoint_encoder(checkpoint)
    except CheckError as err:
        raise SemoreError(f"{checkpoint_path}: {err}: a semore-finetune checkpoint") from None
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise SemoreError(
            f"{checkpoint_path}: the encoder weights do not match its encoder_config "
            f"({first_line(err)})"
        ) from None
    metadata = {"finetune_step": checkpoint["step"], "encoder_source": checkpoint["encoder_source"]}
    return encoder, metadata


def check_memory(data: str | Path, frame_stack: int, batch_size: int) -> None:
    """Refuse a feature batch that cannot fit in this machine's memory."""
    info = read_dataset_info(data, with_ann=False)
    frame = memory.frame_bytes(info.image_height, info.image_width)
    memory.check_fits(
        f"the probe at --batch-size {batch_size} on {info.image_height}x{info.image_width} frames",
        {"input batch (uint8 + float32)": batch_size * frame_stack * frame * 5},
        "a smaller --batch-size",
    )


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    encoder, metadata = load_probe_encoder(args.encoder, args.data, args.frame_stack)
    check_memory(args.data, encoder.config.frame_stack, args.batch_size)
    holdout_every = args.holdout_every or metadata.get("holdout_every") or DEFAULT_HOLDOUT_EVERY
    result = run_probe(
        encoder,
        args.data,
        holdout_every=holdout_every,
        batch_size=args.batch_size,
        alpha=args.alpha,
        device=args.device,
    )
    result.update(encoder=args.encoder, data=str(args.data))
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    print(summary_line(result))


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run, config_overrides=False)


if __name__ == "__main__":
    raise SystemExit(main())
