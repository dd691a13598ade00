"""``encoder_mode: guided``: the pretraining terms on batches of the annotated dataset, during RL.

The dataset is the one the export records (``metadata["dataset"]["path"]``: a folder or an
``hf://`` URL with its revision) unless ``guide.data`` names another; it is read with
``pipeline.data`` exactly as pretraining reads it (shard pairs, frame stacks rebuilt within
episodes, the training episodes only, so the probe's held-out episodes stay unseen), and its
targets are standardised with the export's statistics, the scaling the heads were trained on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import webdataset as wds

from pipeline.data import schema
from pipeline.data.source import DatasetInfo, read_dataset_info, shard_urls
from pipeline.data.windows import Collate, EpisodeSplit, ShardPairReader, TrainStats, train_stats
from pipeline.errors import SemoreError
from semore.encoder import SemoreEncoder, load_pretrain_heads
from semore.guide import PretrainGuide
from semore.heads import SemorePretrainModel
from semore.losses import SemorePretrainLoss
from semore.sac import SACAgent

if TYPE_CHECKING:
    from pipeline.finetune.config import FinetuneConfig, GuideConfig

log = logging.getLogger(__name__)


def export_stats(metadata: dict, state_dim: int) -> TrainStats:
    """The export's target standardisation as the pretraining Collate reads it."""
    return TrainStats(
        motion_mean=np.asarray(metadata["motion_mean"], np.float32),
        motion_std=np.asarray(metadata["motion_std"], np.float32),
        reward_mean=float(metadata["reward_mean"]),
        reward_std=float(metadata["reward_std"]),
        state_mean=np.zeros(state_dim, np.float32),  # the state term is not a guide term
        state_std=np.ones(state_dim, np.float32),
        num_train_samples=0,
        num_heldout_samples=0,
        train_episodes=[],
        heldout_episodes=[],
        heldout_shards=[],
    )


def guide_batches(
    data: str, frame_stack: int, image_hw: tuple[int, int], holdout_every: int,
    stats: TrainStats, cfg: GuideConfig, seed: int,
) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """An endless, seeded stream of pretraining batches of ``data``'s training episodes."""
    urls = shard_urls(data, with_ann=True)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            [raw for raw, _ in urls], seed=seed, worker_seed=lambda: 0, deterministic=True
        ),  # fmt: skip
        ShardPairReader(dict(urls), frame_stack, EpisodeSplit(holdout_every, "train"), image_hw),
        wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=random.Random(seed)),
        wds.batched(cfg.batch_size, collation_fn=Collate(stats), partial=False),
    )
    return iter(pipeline)


def _check_dataset(info: DatasetInfo, where: str, encoder: SemoreEncoder, heads: dict) -> None:
    """One-line error when the guide dataset cannot feed this encoder and these heads."""
    cfg = encoder.config
    wanted = {
        "image size": ((info.image_height, info.image_width), (cfg.image_height, cfg.image_width)),
        "embedding dim": (info.embedding_dim, heads["text_dim"]),
        "motion targets": (len(info.motion_targets), heads["motion_dim"]),
        "action dim": (info.action_dim, heads["action_dim"]),
    }
    for name, (found, expected) in wanted.items():
        if found != expected:
            raise SemoreError(
                f"guide dataset {where} has {name} {found}: expected {expected}, as the "
                "encoder and its pretraining heads (guide.data names another dataset)"
            )


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


def _heads_spec(info: DatasetInfo, saved: dict | None) -> dict:
    if saved is not None:
        return saved["model"]
    return {"text_dim": info.embedding_dim, "motion_dim": len(info.motion_targets),
            "action_dim": info.action_dim, "heads_read": "h", "state_dim": 0}  # fmt: skip


def build_guide(
    agent: SACAgent, cfg: FinetuneConfig, export: Path | None, metadata: dict
) -> PretrainGuide:
    """The guide for ``agent`` from the export's heads (fresh heads for an export without, or
    --encoder none) on the guide dataset; SemoreError naming what does not fit."""
    data = _guide_data(cfg, metadata)
    try:
        info = read_dataset_info(data, with_ann=True)
    except SemoreError as err:
        raise SemoreError(f"guide dataset: {err}") from None
    saved = load_pretrain_heads(export) if export is not None else None
    if saved is None:
        log.warning("guided: %s has no pretraining heads; they start fresh", export or "none")
    spec = _heads_spec(info, saved)
    _check_dataset(info, str(data), agent.encoder, spec)
    recorded = metadata.get("dataset", {})
    if recorded.get("manifest_sha256") not in (None, info.dataset_id()["manifest_sha256"]):
        log.warning("guide dataset %s changed since pretraining (manifest hash differs)", data)
    model = SemorePretrainModel(agent.encoder, **spec).to(agent.device)
    loss_kwargs = dict(saved["loss"]) if saved is not None else {}
    loss_kwargs["state_weight"] = 0.0  # the no-language control's term needs state targets
    loss = SemorePretrainLoss(**loss_kwargs).to(agent.device)
    if saved is not None:
        _load_heads(model, loss, saved, export)
    if "motion_mean" in metadata:
        stats = export_stats(metadata, len(schema.CAPTION_STATE_FIELDS))
    else:  # --encoder none: standardise with the dataset's own training statistics
        stats = train_stats(shard_urls(data, with_ann=True), EpisodeSplit(_holdout(metadata)))
    hw = (info.image_height, info.image_width)

    def open_stream(num_drawn: int) -> Iterator[dict[str, torch.Tensor]]:
        seed = int(np.random.SeedSequence([cfg.seed, num_drawn]).generate_state(1)[0])
        return guide_batches(data, cfg.frame_stack, hw, _holdout(metadata), stats, cfg.guide, seed)

    guide = PretrainGuide(model, loss, open_stream, cfg.guide.weight, cfg.guide.every,
                          cfg.guide.heads_lr, cfg.sac.aug_pad)  # fmt: skip
    return guide.to(agent.device)


def _load_heads(
    model: SemorePretrainModel, loss: SemorePretrainLoss, saved: dict, export: Path
) -> None:
    """The export's heads into ``model`` (whose encoder is the agent's, already loaded)."""
    try:
        missing, unexpected = model.load_state_dict(saved["state_dict"], strict=False)
        loss.load_state_dict(saved["loss_state_dict"])
    except RuntimeError as err:
        raise SemoreError(
            f"{export}: its pretraining heads do not fit its encoder ({str(err).splitlines()[-1]})"
            ": expected an export written by semore-pretrain"
        ) from None
    lacking = sorted(key for key in missing if not key.startswith("encoder."))
    if unexpected or lacking:
        raise SemoreError(
            f"{export}: pretraining heads lack {lacking} / have extra {sorted(unexpected)}: "
            "expected an export written by semore-pretrain"
        )


def _holdout(metadata: dict) -> int:
    """The export's held-out split (its episodes stay unseen); 4, pretraining's default, without."""
    return int(metadata.get("holdout_every", 4))
