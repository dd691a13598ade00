"""The pretraining DataModule: raw/ann join, frame stacks, episode split, workers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.data.shards import AtomicShardWriter, iter_shard
from pipeline.data.source import iter_pairs, shard_urls
from pipeline.data.windows import EpisodeSplit, ShardPairReader
from pipeline.errors import SemoreError
from pipeline.pretrain.config import DataConfig
from pipeline.pretrain.datamodule import SemoreDataModule
from tests.conftest import synthetic_state, write_synthetic_raw
from tests.synthetic_ann import (
    caption_embedding,
    motion_targets,
    semantic_caption,
    write_synthetic_ann,
)

NUM_EPISODES, STEPS, EMB_DIM = 4, 6, 16


@pytest.fixture
def ann_dataset(tmp_path: Path) -> Path:
    root = write_synthetic_raw(tmp_path / "data", NUM_EPISODES, STEPS, episodes_per_shard=2)
    return write_synthetic_ann(root, embedding_dim=EMB_DIM)


def pixel(episode: int, step: int) -> int:
    """The red value conftest's synthetic frames carry for (episode, step)."""
    return (episode * 37 + step * 11) % 256


def assert_stack(obs: torch.Tensor, episode: int, step: int, frame_stack: int) -> None:
    """obs (3K, H, W): frame j (oldest first) shows step max(step - (K-1-j), 0)."""
    for j in range(frame_stack):
        shown = max(step - (frame_stack - 1 - j), 0)
        assert obs[3 * j, -1, 0].item() == pixel(episode, shown), (episode, step, j)
        assert obs[3 * j + 1, 0, 0].item() == shown * 20 % 256, (episode, step, j)


def all_windows(root: Path, frame_stack: int) -> list[dict]:
    urls = shard_urls(root)
    reader = ShardPairReader(dict(urls), frame_stack, EpisodeSplit(0), (32, 32))
    return list(reader({"url": raw} for raw, _ in urls))


def test_windows_rebuild_stacks_within_episodes_and_join_annotations(ann_dataset: Path):
    samples = all_windows(ann_dataset, frame_stack=3)
    assert [(s["episode"], s["step"]) for s in samples] == [
        (e, t) for e in range(NUM_EPISODES) for t in range(STEPS)
    ]
    for sample in samples:
        episode, step = sample["episode"], sample["step"]
        obs = torch.from_numpy(np.concatenate(sample["frames"], axis=-1)).permute(2, 0, 1)
        assert_stack(obs, episode, step, 3)
        state = synthetic_state(episode, step, 0.2)
        # The annotation joined to this frame is the one written for the same key.
        np.testing.assert_array_equal(
            sample["emb_sem"], caption_embedding(semantic_caption(state), EMB_DIM)
        )
        np.testing.assert_array_equal(sample["motion"], motion_targets(state))


def test_train_and_val_loaders_split_by_episode(ann_dataset: Path):
    cfg = DataConfig(batch_size=4, frame_stack=3, num_workers=0, shuffle_buffer=8, holdout_every=4)
    dm = SemoreDataModule(ann_dataset, cfg, seed=0)
    stats = dm.stats
    assert stats.heldout_episodes == [3] and stats.train_episodes == [0, 1, 2]
    assert (stats.num_train_samples, stats.num_heldout_samples) == (18, 6)
    loader = dm.train_dataloader()
    assert len(loader) == 18 // 4
    train_seen = set()
    for _ in range(3):  # epochs
        batches = list(loader)
        assert len(batches) == len(loader)
        for batch in batches:
            assert batch["obs"].shape == (4, 9, 32, 32) and batch["obs"].dtype == torch.uint8
            assert batch["emb_sem"].shape == (4, EMB_DIM) and batch["motion"].shape == (
                4,
                len(schema.MOTION_TARGETS),
            )
            for i, (episode, step) in enumerate(zip(batch["episode"], batch["step"], strict=True)):
                assert_stack(batch["obs"][i], int(episode), int(step), 3)
                train_seen.add(int(episode))
                # Targets are standardised with the training statistics.
                raw = motion_targets(synthetic_state(int(episode), int(step), 0.2))
                expected = (raw - stats.motion_mean) / stats.motion_std
                torch.testing.assert_close(batch["motion"][i], torch.from_numpy(expected))
    val = [
        (int(e), int(t))
        for b in dm.val_dataloader()
        for e, t in zip(b["episode"], b["step"], strict=True)
    ]
    assert train_seen <= {0, 1, 2}
    assert val == [(3, t) for t in range(STEPS)]
    # Standardised motion over the training samples has mean 0.
    motion = np.stack(
        [motion_targets(synthetic_state(e, t, 0.2)) for e in range(3) for t in range(STEPS)]
    )
    np.testing.assert_allclose(
        (motion - stats.motion_mean).mean(0) / stats.motion_std, 0, atol=1e-5
    )


def test_loaders_with_two_workers(ann_dataset: Path):
    cfg = DataConfig(batch_size=3, frame_stack=2, num_workers=2, shuffle_buffer=6, holdout_every=2)
    dm = SemoreDataModule(ann_dataset, cfg, seed=1)
    assert dm.stats.heldout_episodes == [1, 3]
    loader = dm.train_dataloader()
    assert len(loader) == 2 * (12 // 3 // 2)  # both workers yield the same count
    for _ in range(2):  # persistent workers serve a second epoch
        batches = list(loader)
        assert len(batches) == len(loader)
        for batch in batches:
            assert set(batch["episode"].tolist()) <= {0, 2}
            for i, (episode, step) in enumerate(zip(batch["episode"], batch["step"], strict=True)):
                assert_stack(batch["obs"][i], int(episode), int(step), 2)
    val = sorted(
        (int(e), int(t))
        for b in dm.val_dataloader()
        for e, t in zip(b["episode"], b["step"], strict=True)
    )
    assert val == [(e, t) for e in (1, 3) for t in range(STEPS)]


def rewrite_ann_shard(root: Path, rename: dict[str, str]) -> Path:
    path = root / schema.ANN_DIR / schema.shard_name(schema.ANN_PREFIX, 0)
    samples = list(iter_shard(path, decode=False))
    with AtomicShardWriter(path) as writer:
        for sample in samples:
            key = sample.pop("__key__")
            writer.write(rename.get(key, key), sample)
    return path


def test_key_mismatch_names_shard_and_keys(ann_dataset: Path):
    good, bad = schema.make_key("syn", 0, 0, 2), schema.make_key("syn", 0, 7, 2)
    path = rewrite_ann_shard(ann_dataset, {good: bad})
    with pytest.raises(SemoreError) as err:
        list(iter_pairs(*shard_urls(ann_dataset)[0]))
    message = str(err.value)
    assert path.name in message and good in message and bad in message
    with pytest.raises(SemoreError, match=bad):
        _ = SemoreDataModule(ann_dataset, DataConfig()).stats


def test_missing_ann_section_and_count_mismatch(tmp_path: Path, ann_dataset: Path):
    raw_only = write_synthetic_raw(tmp_path / "raw_only")
    with pytest.raises(SemoreError, match="no 'ann' section: run semore-annotate first"):
        SemoreDataModule(raw_only, DataConfig())
    manifest = mf.read_manifest(ann_dataset)
    del manifest["ann"]["shards"][schema.shard_name(schema.ANN_PREFIX, 1)]
    manifest["ann"]["totals"] = mf.totals(manifest["ann"]["shards"])
    mf.write_manifest(ann_dataset, manifest)
    with pytest.raises(SemoreError, match="2 raw shards and 1 annotation shards"):
        SemoreDataModule(ann_dataset, DataConfig())


def test_format_version_is_checked(ann_dataset: Path):
    path = mf.manifest_path(ann_dataset)
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(SemoreError, match="format version 99"):
        SemoreDataModule(ann_dataset, DataConfig())


def test_data_config_rejects_bad_values():
    with pytest.raises(ValueError, match="holdout_every"):
        DataConfig(holdout_every=1)
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
