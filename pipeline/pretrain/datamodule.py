"""The pretraining DataModule: raw + annotation shards streamed with webdataset.

Training stream, per DataLoader worker of each rank::

    ResampledShards(raw urls)      shards drawn with replacement, seeded by (seed, rank, worker)
    -> ShardPairReader             raw + ann tars read in lockstep, joined by key, frame stacks
                                   rebuilt within episodes, held-out episodes dropped
    -> WorkerShuffle(buffer)       shuffling only after windowing, so stacks stay intact
    -> batched(batch_size)         collated to tensors in the worker
    -> EpochStream                 a fixed number of batches per epoch from one endless stream

DDP: every rank resamples shards with its own seed (no rank can run out of shards, however
few there are) and stops after the same number of batches: ``batches_per_rank =
num_train_samples // (batch_size * world_size)`` (at least 1), split evenly over the
loader workers, so one epoch is about one pass over the training samples in total and
all ranks step in sync. Validation reads the held-out episodes' shards once, in order,
split over the loader workers only: every rank sees the whole (small) held-out set, so
the ranks' logged validation values agree and no rank waits on another.
"""

from __future__ import annotations

import logging
import math
import random
from functools import cached_property
from itertools import islice
from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.source import DatasetInfo, read_dataset_info, shard_urls
from pipeline.data.windows import (
    Collate,
    EpisodeSplit,
    ShardPairReader,
    TrainStats,
    train_stats,
)
from pipeline.pretrain.config import DataConfig

log = logging.getLogger(__name__)


class WorkerSeed:
    """ResampledShards' seed source: distinct per (rank, loader worker), fixed across runs."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self) -> int:
        info = get_worker_info()
        return self.rank * 1000 + (info.id if info is not None else 0)


class WorkerShuffle:
    """Buffer shuffle with an RNG seeded by (seed, rank, loader worker)."""

    def __init__(self, buffer_size: int, seed: int, rank: int) -> None:
        self.buffer_size = buffer_size
        self.seed = seed
        self.rank = rank

    def __call__(self, source):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(hash((self.seed, self.rank, worker)))
        return wds.shuffle(self.buffer_size, initial=self.buffer_size, rng=rng)(source)


class EpochStream(IterableDataset):
    """``items_per_epoch`` items per epoch from one long-lived pipeline iterator.

    webdataset's ``with_epoch`` restarts the pipeline at every epoch, which drops the
    shuffle buffer and refills it (seconds of PNG decoding) before the next batch; one
    iterator kept per worker (workers are persistent) fills it once per run.
    """

    def __init__(self, pipeline: wds.DataPipeline, items_per_epoch: int, length: int) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.items_per_epoch = items_per_epoch
        self.length = length
        self._iterator = None  # created lazily inside the worker that iterates

    def __iter__(self):
        if self._iterator is None:
            self._iterator = iter(self.pipeline)
        return islice(self._iterator, self.items_per_epoch)

    def __len__(self) -> int:
        return self.length


class SemoreDataModule(L.LightningDataModule):
    """Train / validation loaders over ``data`` (a local dataset folder with annotations).

    Manifest checks run at construction, so a wrong ``--data`` fails before training
    starts. ``stats`` (one pass over the shards) gives the motion and reward mean/std of
    the training episodes, which the model stores with its checkpoint and export.
    """

    def __init__(
        self, data: str | Path, cfg: DataConfig, seed: int = 0, extra_frames: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        # Windows hold frame_stack + extra_frames frames (ATC's anchor and its positive).
        self.window = cfg.frame_stack + extra_frames
        self.info: DatasetInfo = read_dataset_info(data, with_ann=True)
        self.urls = shard_urls(data, with_ann=True)
        self.ann_by_raw = dict(self.urls)

    @cached_property
    def stats(self) -> TrainStats:
        stats = train_stats(self.urls, EpisodeSplit(self.cfg.holdout_every))
        log.info(
            "training on %d samples of %d episodes, validating on %d samples of %d episodes",
            stats.num_train_samples,
            len(stats.train_episodes),
            stats.num_heldout_samples,
            len(stats.heldout_episodes),
        )
        return stats

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.info.image_height, self.info.image_width

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def batches_per_rank(self, world_size: int) -> int:
        return max(1, self.stats.num_train_samples // (self.cfg.batch_size * world_size))

    def _collate(self) -> Collate:
        return Collate(self.stats)

    def _loader(self, pipeline: IterableDataset, num_workers: int) -> DataLoader:
        return DataLoader(
            pipeline,
            batch_size=None,  # batches are made in the pipeline, inside the workers
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_world()
        cfg = self.cfg
        loader_workers = max(1, cfg.num_workers)
        batches_per_worker = math.ceil(self.batches_per_rank(world_size) / loader_workers)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(
                [raw for raw, _ in self.urls],
                seed=self.seed,
                worker_seed=WorkerSeed(rank),
                deterministic=True,
            ),
            ShardPairReader(
                self.ann_by_raw,
                self.window,
                EpisodeSplit(cfg.holdout_every, "train"),
                self.image_hw,
            ),
            WorkerShuffle(cfg.shuffle_buffer, self.seed, rank),
            wds.batched(cfg.batch_size, collation_fn=self._collate(), partial=False),
        )
        # Every worker yields batches_per_worker batches; the length is the rank's total.
        stream = EpochStream(pipeline, batches_per_worker, batches_per_worker * loader_workers)
        return self._loader(stream, cfg.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        shards = self.stats.heldout_shards
        if not shards:
            return []
        cfg = self.cfg
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(shards),  # in order, not shuffled: validation is deterministic
            wds.split_by_worker,
            ShardPairReader(
                self.ann_by_raw,
                self.window,
                EpisodeSplit(cfg.holdout_every, "heldout"),
                self.image_hw,
            ),
            wds.batched(cfg.batch_size, collation_fn=self._collate(), partial=True),
        )
        # More workers than shards would only idle.
        return self._loader(pipeline, min(cfg.num_workers, len(shards)))
