"""The pretraining DataModule: raw + annotation shards streamed with webdataset.

Training stream of each rank, split over its loader workers (``TrainStream``)::

    shards drawn with replacement     seeded by (seed, rank, stream, epoch)
    -> ShardPairReader(lazy)          raw + ann tars read in lockstep, joined by key, frame
                                      stacks rebuilt within episodes, held-out episodes
                                      dropped; nothing decoded yet
    -> shuffle(buffer)                after windowing, so stacks stay intact; same seed
    -> skip                           the batches a resumed run already trained on
    -> decode, batched(batch_size)    in the worker

Every epoch's batches are a function of (seed, rank, number of loader workers, epoch) only,
and an epoch is a fixed number of batches, so the batch at any global step can be found
again: a run resumed at step S reads exactly the batches an uninterrupted run reads after S
(the skipped part of the epoch is read but not decoded). The loader workers are the
epoch's "streams": batch ``i`` of an epoch is batch ``i // W`` of stream ``i % W`` (the
DataLoader takes its workers in turn); a resumed epoch renumbers the workers so that the
first one it asks is the stream that holds the next batch.

DDP: every rank resamples shards with its own seed (no rank can run out of shards, however
few there are) and stops after the same number of batches: ``batches_per_rank =
num_train_samples // (batch_size * world_size)`` (at least 1), so one epoch is about one
pass over the training samples in total and all ranks step in sync. Validation reads the
held-out episodes' shards once, in order, split over the loader workers only: every rank
sees the whole (small) held-out set, so the ranks' logged validation values agree and no
rank waits on another.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from functools import cached_property
from itertools import count, islice
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


class TrainStream(IterableDataset):
    """One rank's training batches, ``batches_per_epoch`` per epoch, from ``start_batch`` on.

    Each ``iter()`` is the next epoch (the first starts at ``start_batch``, a global batch
    index: the step a run resumes at). Every loader worker counts epochs in its own copy
    (persistent workers keep it), when ``iter()`` is called rather than when a first batch
    is asked for: a worker may have no batch left in an epoch.
    """

    def __init__(
        self,
        raw_urls: list[str],
        reader: ShardPairReader,
        collate: Collate,
        cfg: DataConfig,
        seed: int,
        rank: int,
        batches_per_epoch: int,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        self.raw_urls = raw_urls
        self.reader = reader
        self.collate = collate
        self.batch_size = cfg.batch_size
        self.shuffle_buffer = cfg.shuffle_buffer
        self.num_streams = max(1, cfg.num_workers)  # one per loader worker
        self.seed = seed
        self.rank = rank
        self.batches_per_epoch = batches_per_epoch
        self.start_batch = start_batch
        self._epochs_started = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        first_epoch, first_offset = divmod(self.start_batch, self.batches_per_epoch)
        epoch = first_epoch + self._epochs_started
        offset = first_offset if self._epochs_started == 0 else 0
        self._epochs_started += 1
        # The DataLoader asks worker 0 first: it plays the stream that holds batch `offset`.
        stream = (worker + offset) % self.num_streams
        mine = range(stream, self.batches_per_epoch, self.num_streams)  # epoch batch indices
        done = len(range(stream, offset, self.num_streams))  # of them, trained on already
        return self._batches(stream, epoch, done, len(mine) - done)

    def _rng(self, stream: int, epoch: int, part: str) -> random.Random:
        # A string seed is hashed with SHA-512: the same in every process and Python run.
        return random.Random(f"semore/{self.seed}/{self.rank}/{stream}/{epoch}/{part}")

    def _batches(self, stream: int, epoch: int, skip: int, take: int) -> Iterator[dict]:
        shard_rng = self._rng(stream, epoch, "shards")
        shards = ({"url": shard_rng.choice(self.raw_urls)} for _ in count())
        shuffle = wds.shuffle(
            self.shuffle_buffer,
            initial=self.shuffle_buffer,
            rng=self._rng(stream, epoch, "shuffle"),
        )
        windows = shuffle(self.reader(shards))  # endless, undecoded
        for _ in range(skip * self.batch_size):
            next(windows)
        for _ in range(take):
            yield self.collate([window.decode() for window in islice(windows, self.batch_size)])


class SemoreDataModule(L.LightningDataModule):
    """Train / validation loaders over ``data`` (a local dataset folder with annotations).

    Manifest checks run at construction, so a wrong ``--data`` fails before training
    starts. ``stats`` (one pass over the shards) gives the motion and reward mean/std of
    the training episodes, which the model stores with its checkpoint and export.
    """

    def __init__(
        self,
        data: str | Path,
        cfg: DataConfig,
        seed: int = 0,
        start_batch: int = 0,
        extra_frames: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.start_batch = start_batch  # the global step a resumed run continues from
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
        reader = ShardPairReader(
            self.ann_by_raw,
            self.window,
            EpisodeSplit(cfg.holdout_every, "train"),
            self.image_hw,
            lazy=True,
        )
        stream = TrainStream(
            [raw for raw, _ in self.urls],
            reader,
            self._collate(),
            cfg,
            self.seed,
            rank,
            self.batches_per_rank(world_size),
            self.start_batch,
        )
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
