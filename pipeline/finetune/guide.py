"""``encoder_mode: guided``: the pretraining terms on batches of the annotated dataset, during RL.

The dataset is the one the export records (``metadata["dataset"]["path"]``: a folder or an
``hf://`` URL with its revision) unless ``guide.data`` names another; it is read with
``pipeline.data`` exactly as pretraining reads it (shard pairs, frame stacks rebuilt within
episodes, the training episodes only, so the probe's held-out episodes stay unseen), and its
targets are standardised with the export's statistics, the scaling the heads were trained on.
When the agent's trunk is frozen (``encoder_trainable_from``) and ``guide.cache_tokens`` is on,
those frame stacks are read and tokenised once at the start and guide batches are rows of that
table: the tokens of a frozen trunk never change, so the per-batch trunk pass was wasted work.
With ``guide.replay_every`` n, every n-th guide batch is instead a batch of the agent's own
replayed frames, annotated online when they were stored (:mod:`pipeline.finetune.captions`),
their targets standardised with the same statistics.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import webdataset as wds
from torch import nn

from pipeline.data import schema
from pipeline.data.source import read_dataset_info, shard_urls
from pipeline.data.windows import Collate, EpisodeSplit, ShardPairReader, TrainStats, train_stats
from pipeline.errors import SemoreError
from pipeline.finetune.captions import OnlineCaptions, online_captions
from pipeline.finetune.guide_model import pretraining_model
from semore.atc import ATCModel
from semore.encoder import SemoreEncoder
from semore.guide import FROM_REPLAY, PretrainGuide
from semore.replay import ReplayBuffer
from semore.trunk_cache import tokens_to_cache

if TYPE_CHECKING:
    from pipeline.finetune.config import FinetuneConfig, GuideConfig

log = logging.getLogger(__name__)

_TABLE_CHUNK = 256  # frame stacks per trunk pass while tokenising the guide dataset
_REPLAY_STREAM = 1  # tells the replay batches' seeds from the dataset streams' ([seed, n])


def export_stats(metadata: dict, state_dim: int) -> TrainStats:
    """The export's target standardisation as the pretraining Collate reads it."""
    return TrainStats(
        motion_mean=np.asarray(metadata["motion_mean"], np.float32),
        motion_std=np.asarray(metadata["motion_std"], np.float32),
        reward_mean=float(metadata["reward_mean"]),
        reward_std=float(metadata["reward_std"]),
        # The no-language control's state targets, as pretraining standardised them (exports
        # written before they were recorded guide without the state term: guide_model).
        state_mean=np.asarray(metadata.get("state_mean", np.zeros(state_dim)), np.float32),
        state_std=np.asarray(metadata.get("state_std", np.ones(state_dim)), np.float32),
        num_train_samples=0,
        num_heldout_samples=0,
        train_episodes=[],
        heldout_episodes=[],
        heldout_shards=[],
    )


def guide_batches(
    data: str,
    frame_stack: int,
    image_hw: tuple[int, int],
    holdout_every: int,
    stats: TrainStats,
    cfg: GuideConfig,
    seed: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of pretraining batches of ``data``'s training episodes."""
    urls = shard_urls(data, with_ann=True)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            [raw for raw, _ in urls], seed=seed, worker_seed=lambda: 0, deterministic=True
        ),
        ShardPairReader(dict(urls), frame_stack, EpisodeSplit(holdout_every, "train"), image_hw),
        wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=random.Random(seed)),
        wds.batched(cfg.batch_size, collation_fn=Collate(stats), partial=False),
    )
    return iter(pipeline)


def token_table(
    encoder: SemoreEncoder,
    data: str,
    frame_stack: int,
    image_hw: tuple[int, int],
    holdout_every: int,
    stats: TrainStats,
    device: torch.device,
    atc: ATCModel | None = None,
) -> dict[str, torch.Tensor]:
    """Every training frame stack of ``data`` as a guide batch row, its pixels replaced by the
    frozen trunk's flat tokens ("obs_tokens", float16): one pass, in shard order. With ``atc``,
    rows are ATC's windows: the anchor's tokens and, as "pos_tokens", the momentum encoder's
    tokens of the stack ``atc.temporal_shift`` steps later."""
    urls = shard_urls(data, with_ann=True)
    window = frame_stack + (atc.temporal_shift if atc is not None else 0)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([raw for raw, _ in urls]),
        ShardPairReader(dict(urls), window, EpisodeSplit(holdout_every, "train"), image_hw),
        wds.batched(_TABLE_CHUNK, collation_fn=Collate(stats), partial=True),
    )
    was_training, parts = encoder.training, []
    encoder.train(False)
    try:
        for batch in pipeline:
            obs = batch.pop("obs").to(device)  # (B, 3(K + shift), H, W)
            if atc is not None:
                obs, positive = atc.split(obs)
                pos_tokens = tokens_to_cache(atc.target_encoder.eval(), positive)  # (B, S, N, C)
                batch["pos_tokens"] = pos_tokens.flatten(1).to(torch.float16).cpu()
            tokens = tokens_to_cache(encoder, obs)  # (B, S, N, C)
            batch["obs_tokens"] = tokens.flatten(1).to(torch.float16).cpu()  # (B, S*N*C)
            parts.append(batch)
    finally:
        encoder.train(was_training)
    if not parts:
        raise SemoreError(f"guide dataset {data} has no training frame stacks: expected some")
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def table_batches(
    table: dict[str, torch.Tensor], batch_size: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of ``batch_size`` rows of ``table``, drawn without
    replacement within a batch (InfoNCE's negatives are the other rows)."""
    rng = np.random.default_rng(seed)
    num_rows = len(table["obs_tokens"])
    while True:
        rows = torch.from_numpy(rng.choice(num_rows, size=batch_size, replace=False))
        yield {key: value[rows] for key, value in table.items()}


def replay_guide_batch(
    replay: ReplayBuffer, batch_size: int, stats: TrainStats, seed: int, tokens: bool
) -> dict[str, torch.Tensor]:
    """A pretraining batch of replayed steps (their stored tokens as "obs_tokens" when
    ``tokens``), targets standardised with ``stats`` as the dataset's, marked FROM_REPLAY."""
    batch = replay.sample_annotated(batch_size, np.random.default_rng(seed), features=tokens)
    batch["reward"] = (batch["reward"] - stats.reward_mean) / stats.reward_std
    mean, std = torch.from_numpy(stats.motion_mean), torch.from_numpy(stats.motion_std)
    batch["motion"] = (batch["motion"] - mean) / std
    if tokens:
        batch["obs_tokens"] = batch.pop(f"obs_{replay.feature_key}")
    batch[FROM_REPLAY] = torch.ones(())
    return batch


def mixed_batches(
    dataset: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    replay: Callable[[int], dict[str, torch.Tensor]],
    replay_every: int,
    num_drawn: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Guide batches from ``num_drawn`` on: batch k (counted from 0) is ``replay(k)`` when
    ``(k + 1) % replay_every == 0``, else the next of ``dataset(num_drawn)``, opened on its
    first use (replay_every 1 never reads the dataset)."""
    stream = None
    for k in itertools.count(num_drawn):
        if (k + 1) % replay_every == 0:
            yield replay(k)
            continue
        if stream is None:
            stream = dataset(num_drawn)
        yield next(stream)


def _guide_data(cfg: FinetuneConfig, metadata: dict) -> str:
    if cfg.guide.data is not None:
        return cfg.guide.data
    recorded = metadata.get("dataset", {}).get("path")
    if not recorded:
        raise SemoreError(
            "encoder_mode guided: the encoder records no pretraining dataset: expected "
            "--guide.data DATASET (a folder or hf://datasets/ORG/NAME[@REVISION])"
        )
    return recorded


def guide_captions(cfg: FinetuneConfig, metadata: dict) -> OnlineCaptions:
    """The online annotator of replayed frames for ``guide.replay_every``, as the guide
    dataset was annotated; SemoreError when that cannot be reproduced online."""
    data = _guide_data(cfg, metadata)
    try:
        info = read_dataset_info(data, with_ann=True)
    except SemoreError as err:
        raise SemoreError(f"guide dataset: {err}") from None
    return online_captions(info, cfg.repeat)


def build_guide(
    encoder: nn.Module,
    cfg: FinetuneConfig,
    export: Path | None,
    metadata: dict,
    replay: ReplayBuffer | None = None,
) -> PretrainGuide:
    """The guide of the agent's ``encoder`` (on the device it trains on) from the export's
    heads (fresh heads for an export without, or --encoder none) on the guide dataset, and on
    ``replay``'s annotated frames every ``guide.replay_every``-th batch; SemoreError naming
    what does not fit. The agent calls it as it is built (``SACAgent(guide=...)``). An export
    pretrained with ATC (the label-free baseline) guides with ATC's loss and momentum encoder."""
    data = _guide_data(cfg, metadata)
    try:
        info = read_dataset_info(data, with_ann=True)
    except SemoreError as err:
        raise SemoreError(f"guide dataset: {err}") from None
    device = next(encoder.parameters()).device
    model, loss, tau = pretraining_model(encoder, cfg, info, data, export, metadata, device)
    atc = model if isinstance(model, ATCModel) else None
    if "motion_mean" in metadata:
        stats = export_stats(metadata, len(schema.CAPTION_STATE_FIELDS))
    else:  # --encoder none: standardise with the dataset's own training statistics
        stats = train_stats(shard_urls(data, with_ann=True), EpisodeSplit(_holdout(metadata)))
    hw = (info.image_height, info.image_width)
    table = None
    if cfg.guide.cache_tokens and getattr(encoder, "frozen_below", None) is not None:
        table = _cached_table(encoder, device, data, cfg, hw, _holdout(metadata), stats, atc)
    window = cfg.frame_stack + (atc.temporal_shift if atc is not None else 0)

    def open_dataset(num_drawn: int) -> Iterator[dict[str, torch.Tensor]]:
        seed = int(np.random.SeedSequence([cfg.seed, num_drawn]).generate_state(1)[0])
        if table is not None:
            return table_batches(table, cfg.guide.batch_size, seed)
        return guide_batches(data, window, hw, _holdout(metadata), stats, cfg.guide, seed)

    def replay_batch(k: int) -> dict[str, torch.Tensor]:
        # Seeded by the batch's index alone: a resumed run draws what the uninterrupted did.
        seed = int(np.random.SeedSequence([cfg.seed, k, _REPLAY_STREAM]).generate_state(1)[0])
        return replay_guide_batch(replay, cfg.guide.batch_size, stats, seed, cfg.caches_tokens)

    def open_stream(num_drawn: int) -> Iterator[dict[str, torch.Tensor]]:
        if replay is None or cfg.guide.replay_every == 0:
            return open_dataset(num_drawn)
        return mixed_batches(open_dataset, replay_batch, cfg.guide.replay_every, num_drawn)

    guide = PretrainGuide(
        model,
        loss,
        open_stream,
        cfg.guide.weight,
        cfg.guide.every,
        cfg.guide.heads_lr,
        cfg.sac.aug_pad,
        momentum_tau=tau,
    )
    return guide.to(device)


def _cached_table(
    encoder: nn.Module,
    device: torch.device,
    data: str,
    cfg: FinetuneConfig,
    hw: tuple[int, int],
    holdout_every: int,
    stats: TrainStats,
    atc: ATCModel | None = None,
) -> dict[str, torch.Tensor]:
    start_s = time.perf_counter()
    table = token_table(encoder, data, cfg.frame_stack, hw, holdout_every, stats, device, atc)
    num_rows = len(table["obs_tokens"])
    if num_rows < cfg.guide.batch_size:
        raise SemoreError(
            f"guide dataset {data} has {num_rows} training frame stacks: expected at least "
            f"guide.batch_size ({cfg.guide.batch_size})"
        )
    size_mb = sum(value.nbytes for value in table.values()) / 2**20
    log.info(
        "guide: %d frame stacks of %s tokenised once (%.0f MB, %.1f s)",
        num_rows,
        data,
        size_mb,
        time.perf_counter() - start_s,
    )
    return table


def _holdout(metadata: dict) -> int:
    """The export's held-out split (its episodes stay unseen); 4, pretraining's default, without."""
    return int(metadata.get("holdout_every", 4))
