"""Reading a dataset's shards in order: raw + annotation join, frame stacks, batches.

A dataset is a local folder or a Hugging Face Hub dataset repo
(``hf://datasets/ORG/NAME[@REVISION]``, as written by ``semore-push``), whose shards are
streamed rather than downloaded.

A shard pair ``(raw-NNNNNN.tar, ann-NNNNNN.tar)`` is read sequentially in lockstep and
joined by sample key. Frame stacks are rebuilt while reading (episodes are never split
across shards and steps are in order), so shuffling can happen afterwards without
breaking them. Used by the pretraining DataModule and by the linear probe.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import torch
from torch import Tensor

from pipeline import dataset, schema
from pipeline import manifest as mf
from pipeline.errors import SemoreError
from pipeline.shards import decode_member, iter_shard

# No lead vehicle (``lead_present`` false, or a null distance in older data) and leads
# farther than this both read as this distance: the simulators' lead range, beyond which
# a vehicle is a few pixels in an 84 px render.
LEAD_DISTANCE_CAP_M = schema.LEAD_RANGE_M


HUB_PREFIX = "hf://datasets/"
# --data hf://datasets/ORG/NAME[@REVISION]; "hf:/" too, as a Path collapses the "//"
_HUB_DATA = re.compile(r"hf:/+datasets/(?P<repo_id>[\w.-]+/[\w.-]+)(?:@(?P<revision>.+?))?/?")


@dataclass(frozen=True)
class HubRepo:
    """A dataset repo on the Hugging Face Hub, read by streaming its shards."""

    repo_id: str  # ORG/NAME
    revision: str  # branch, tag or commit

    @property
    def url(self) -> str:
        """``hf://datasets/ORG/NAME@REV``: the base of the file URLs fsspec's hf:// reads."""
        return f"{HUB_PREFIX}{self.repo_id}@{quote(self.revision, safe='')}"

    def read_manifest(self) -> dict:
        """Fetch ``manifest.json`` (a small file, cached by huggingface_hub) and check it."""
        from huggingface_hub import errors, hf_hub_download

        where = mf.manifest_where(self.url)
        try:
            path = hf_hub_download(
                self.repo_id, schema.MANIFEST_NAME, repo_type="dataset", revision=self.revision
            )
        except errors.RepositoryNotFoundError:  # also what a private repo without access gives
            raise SemoreError(
                f"dataset repo {self.repo_id} not found on the Hugging Face Hub or not readable: "
                "expected a dataset pushed with semore-push (for a private repo, a token with "
                "read access: HF_TOKEN or `hf auth login`)"
            ) from None
        except errors.RevisionNotFoundError:
            raise SemoreError(
                f"dataset repo {self.repo_id} has no revision {self.revision!r}: expected a "
                "branch, tag or commit of it"
            ) from None
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
            raise SemoreError(
                f"cannot reach the Hugging Face Hub for {where} and it is not cached: expected "
                "network access to stream the dataset (is HF_HUB_OFFLINE set?)"
            ) from None
        except errors.EntryNotFoundError:
            raise SemoreError(
                f"{where} not found: expected a Semore dataset pushed with semore-push"
            ) from None
        except OSError as err:  # other HTTP and connection errors
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise SemoreError(
                f"cannot read {where} ({reason}): expected a readable Hugging Face Hub dataset"
            ) from None
        return mf.parse_manifest(Path(path).read_bytes(), where)


# Where ``--data`` points: a local dataset folder or a Hub dataset repo.
DatasetSource = Path | HubRepo


def _hub_repo(url: str) -> HubRepo | None:
    match = _HUB_DATA.fullmatch(url)
    if match is None:
        return None
    return HubRepo(match["repo_id"], unquote(match["revision"] or "main"))


def _source(data: str | Path) -> DatasetSource:
    """The dataset ``--data`` names; the single place to extend for other remote datasets."""
    hub = _hub_repo(str(data))
    if hub is not None:
        return hub
    if "://" in str(data) or str(data).startswith("hf:/"):
        raise SemoreError(
            f"--data {data} is not a dataset URL this reads: expected a local dataset folder "
            "or hf://datasets/ORG/NAME[@REVISION]"
        )
    root = Path(data)
    if not root.is_dir():
        raise SemoreError(f"--data {root} is not a folder: expected a Semore dataset folder")
    return root


def _location(source: DatasetSource) -> Path | str:
    """The folder, or the repo's ``hf://`` URL: what names the dataset in errors and exports."""
    return source.url if isinstance(source, HubRepo) else source


def _read_manifest(source: DatasetSource) -> dict:
    return source.read_manifest() if isinstance(source, HubRepo) else mf.read_manifest(source)


def _completed_shards(source: DatasetSource, manifest: dict, section_name: str) -> list[str]:
    """URLs (or paths) of the shards the manifest lists as complete, in index order."""
    if isinstance(source, Path):
        return [str(path) for path in dataset.completed_shards(source, section_name)]
    # The Hub holds what semore-push uploaded: the shards the manifest lists.
    section = mf.section(manifest, section_name, source.url)
    folder = f"{source.url}/{schema.RAW_DIR if section_name == 'raw' else schema.ANN_DIR}"
    urls = [f"{folder}/{name}" for name in sorted(section.get("shards", {}))]
    if not urls:
        raise SemoreError(f"{folder} holds no complete shards: expected at least one")
    return urls


@dataclass(frozen=True)
class DatasetInfo:
    """What a consumer of a dataset needs to size its model, read from the manifest."""

    root: Path | str  # the dataset folder, or hf://datasets/ORG/NAME@REV
    manifest: dict
    image_height: int
    image_width: int
    action_dim: int
    embedding_dim: int | None  # None when the dataset has no annotations
    motion_targets: tuple[tuple[str, str], ...]  # (name, unit) per motion.npy entry

    def dataset_id(self) -> dict:
        """Identifies exactly which data a model saw (stored in exports)."""
        raw = self.manifest.get("raw", {})
        ann = self.manifest.get("ann", {})
        text = json.dumps(self.manifest, sort_keys=True).encode()
        return {
            "path": str(self.root),
            "manifest_sha256": hashlib.sha256(text).hexdigest()[:16],
            "raw_config_hash": raw.get("config_hash"),
            "ann_config_hash": ann.get("config_hash"),
            "num_samples": raw.get("totals", {}).get("num_samples"),
        }


def read_dataset_info(data: str | Path, with_ann: bool = True) -> DatasetInfo:
    """Check the manifest (format version, sections) and return the dataset's dimensions."""
    source = _source(data)
    root = _location(source)
    manifest = _read_manifest(source)
    raw = mf.section(manifest, "raw", root)
    ann = mf.section(manifest, "ann", root) if with_ann else manifest.get("ann")
    for name in ("image_height", "image_width", "action_names"):
        if name not in raw:
            raise SemoreError(
                f"{mf.manifest_where(root)} raw section has no {name!r}: expected it once a "
                "shard is recorded"
            )
    motion_targets: tuple[tuple[str, str], ...] = ()
    embedding_dim = None
    if ann is not None:
        embedding_dim = int(ann.get("embedding_dim", 0)) or None
        motion_targets = tuple(
            (str(n), str(u)) for n, u in ann.get("motion_targets", schema.MOTION_TARGETS)
        )
        if with_ann and embedding_dim is None:
            raise SemoreError(
                f"{mf.manifest_where(root)} ann section has no embedding_dim: expected a "
                "positive integer (rerun semore-annotate)"
            )
    return DatasetInfo(
        root=root,
        manifest=manifest,
        image_height=int(raw["image_height"]),
        image_width=int(raw["image_width"]),
        action_dim=len(raw["action_names"]),
        embedding_dim=embedding_dim,
        motion_targets=motion_targets,
    )


def shard_urls(data: str | Path, with_ann: bool = True) -> list[tuple[str, str | None]]:
    """``[(raw_url, ann_url), ...]`` in shard order; ann_url is None when ``with_ann`` is False.

    Raw and annotation shards must pair up one to one (same index, same sample count).
    """
    source = _source(data)
    manifest = _read_manifest(source)
    raw_urls = _completed_shards(source, manifest, "raw")
    if not with_ann:
        return [(url, None) for url in raw_urls]
    ann_urls = _completed_shards(source, manifest, "ann")
    raw_table, ann_table = manifest["raw"]["shards"], manifest["ann"]["shards"]
    if len(raw_urls) != len(ann_urls):
        raise SemoreError(
            f"{mf.manifest_where(_location(source))} lists {len(raw_urls)} raw shards and "
            f"{len(ann_urls)} annotation shards: expected one annotation shard per raw shard "
            "(run semore-annotate)"
        )
    pairs = []
    for raw_url, ann_url in zip(raw_urls, ann_urls, strict=True):
        raw_name, ann_name = raw_url.rsplit("/", 1)[-1], ann_url.rsplit("/", 1)[-1]
        raw_count = raw_table[raw_name].get("num_samples")
        ann_count = ann_table[ann_name].get("num_samples")
        if schema.shard_index(raw_name) != schema.shard_index(ann_name) or raw_count != ann_count:
            raise SemoreError(
                f"{ann_url} ({ann_count} samples) does not pair with {raw_url} ({raw_count} "
                "samples): expected the same index and sample count (rerun semore-annotate)"
            )
        pairs.append((raw_url, ann_url))
    return pairs


def iter_shard_samples(url: str) -> Iterator[dict]:
    """Samples of one shard, members as undecoded bytes, in order.

    A Hub shard is streamed, so the manifest's sample count is what checks it arrived whole.
    """
    if not url.startswith(HUB_PREFIX):
        return iter_shard(url, decode=False)
    base, folder, name = url.rsplit("/", 2)
    section_name = "raw" if folder == schema.RAW_DIR else "ann"
    shards = _hub_repo(base).read_manifest()[section_name].get("shards", {})
    return iter_shard(url, decode=False, num_samples=shards.get(name, {}).get("num_samples"))


def iter_pairs(raw_url: str, ann_url: str | None) -> Iterator[tuple[dict, dict | None]]:
    """Raw samples joined with their annotation samples by key, read in lockstep."""
    if ann_url is None:
        for raw in iter_shard_samples(raw_url):
            yield raw, None
        return
    for raw, ann in zip_longest(iter_shard_samples(raw_url), iter_shard_samples(ann_url)):
        raw_key = raw["__key__"] if raw is not None else None
        ann_key = ann["__key__"] if ann is not None else None
        if raw_key != ann_key:
            raise SemoreError(
                f"{ann_url} does not match {raw_url}: annotation key {ann_key!r} where raw key "
                f"{raw_key!r} was expected (same keys in the same order; rerun semore-annotate)"
            )
        yield raw, ann


@dataclass(frozen=True)
class EpisodeSplit:
    """Deterministic train / held-out split by episode: every ``holdout_every``-th is held out.

    ``holdout_every=4`` holds out episodes 3, 7, 11, ...; 0 holds out none. ``part`` is the
    side this filter keeps: "train", "heldout" or "all".
    """

    holdout_every: int
    part: str = "all"

    def is_heldout(self, episode: int) -> bool:
        return self.holdout_every > 0 and episode % self.holdout_every == self.holdout_every - 1

    def __call__(self, episode: int) -> bool:
        if self.part == "all":
            return True
        return self.is_heldout(episode) == (self.part == "heldout")


def _lead_distance(state: dict) -> float:
    value = schema.lead_distance_m(state)
    return LEAD_DISTANCE_CAP_M if value is None else min(value, LEAD_DISTANCE_CAP_M)


def _float_or_nan(value: object) -> float:
    return math.nan if value is None else float(value)


def iter_windows(
    pairs: Iterable[tuple[dict, dict | None]],
    frame_stack: int,
    keep_episode: Callable[[int], bool] = EpisodeSplit(0),
    image_hw: tuple[int, int] | None = None,
    where: str = "",
) -> Iterator[dict]:
    """Decoded samples with ``frames``: the latest ``frame_stack`` frames, oldest first.

    At an episode's start the first frame is repeated; stacks never cross episodes.
    Episodes that ``keep_episode`` rejects are skipped without decoding.
    """
    history: deque[np.ndarray] = deque(maxlen=frame_stack)
    episode_id, last_step = None, -1
    for raw, ann in pairs:
        key = schema.parse_key(raw["__key__"])
        if (key.run, key.worker, key.episode) != episode_id:
            episode_id, last_step = (key.run, key.worker, key.episode), key.step - 1
            history.clear()
        if key.step != last_step + 1:
            raise SemoreError(
                f"{where}sample {raw['__key__']!r} follows step {last_step}: expected the steps "
                "of an episode in order without gaps"
            )
        last_step = key.step
        if not keep_episode(key.episode):
            continue
        yield _decode(raw, ann, key, history, image_hw, where)


def _decode(raw, ann, key, history, image_hw, where) -> dict:
    schema.validate_raw_sample(raw, where)
    if schema.RGB not in raw:
        raise SemoreError(f"{where}sample {raw['__key__']!r} has no {schema.RGB}")
    frame = decode_member(schema.RGB, raw[schema.RGB])  # (H, W, 3) uint8
    if image_hw is not None and frame.shape[:2] != tuple(image_hw):
        raise SemoreError(
            f"{where}sample {raw['__key__']!r} has a {frame.shape[0]}x{frame.shape[1]} frame: "
            f"expected {image_hw[0]}x{image_hw[1]} as in the manifest"
        )
    if history:
        history.append(frame)
    else:
        history.extend([frame] * history.maxlen)
    state = decode_member(schema.STATE, raw[schema.STATE])
    sample = {
        "episode": key.episode,
        "step": key.step,
        "frames": tuple(history),
        "action": decode_member(schema.ACTION, raw[schema.ACTION]).astype(np.float32),
        "reward": float(decode_member(schema.REWARD, raw[schema.REWARD])),
        "speed_mps": _float_or_nan(state.get("speed_mps")),
        "lead_distance_m": _lead_distance(state),
        "lane_index": _float_or_nan(state.get("lane_index")),
    }
    if ann is not None:
        schema.validate_ann_sample(ann, where)
        for name, member in (
            ("emb_sem", schema.EMB_SEM),
            ("emb_mot", schema.EMB_MOT),
            ("motion", schema.MOTION),
        ):
            sample[name] = decode_member(member, ann[member]).astype(np.float32)
    return sample


class ShardPairReader:
    """Pipeline stage: ``{"url": raw_url}`` items in, windowed samples out (picklable)."""

    def __init__(
        self,
        ann_by_raw: dict[str, str | None],
        frame_stack: int,
        keep_episode: Callable[[int], bool],
        image_hw: tuple[int, int] | None = None,
    ) -> None:
        self.ann_by_raw = ann_by_raw
        self.frame_stack = frame_stack
        self.keep_episode = keep_episode
        self.image_hw = image_hw

    def __call__(self, source: Iterable[dict]) -> Iterator[dict]:
        for item in source:
            raw_url = item["url"]
            pairs = iter_pairs(raw_url, self.ann_by_raw[raw_url])
            yield from iter_windows(
                pairs, self.frame_stack, self.keep_episode, self.image_hw, where=f"{raw_url}: "
            )


class Collate:
    """Stack windowed samples into a batch of tensors.

    ``obs`` is uint8 (B, 3K, H, W) with frames oldest first, channels RGB per frame. Given
    ``stats``, ``motion`` and ``reward`` (the pretraining targets) are standardised with
    the training episodes' mean and std, so every loss term starts at O(1) whatever the
    simulator's units; without, they are left as recorded.
    """

    def __init__(self, stats: TrainStats | None = None) -> None:
        self.stats = stats

    def __call__(self, samples: list[dict]) -> dict[str, Tensor]:
        obs = np.stack([np.concatenate(s["frames"], axis=-1) for s in samples])  # (B, H, W, 3K)
        batch = {
            "obs": torch.from_numpy(obs).permute(0, 3, 1, 2).contiguous(),  # (B, 3K, H, W)
            "action": torch.from_numpy(np.stack([s["action"] for s in samples])),
            "episode": torch.tensor([s["episode"] for s in samples], dtype=torch.int64),
            "step": torch.tensor([s["step"] for s in samples], dtype=torch.int64),
        }
        for name in ("reward", "speed_mps", "lead_distance_m", "lane_index"):
            batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.float32)
        stats = self.stats
        if stats is not None:
            batch["reward"] = (batch["reward"] - stats.reward_mean) / stats.reward_std
        if "motion" in samples[0]:
            batch["emb_sem"] = torch.from_numpy(np.stack([s["emb_sem"] for s in samples]))
            batch["emb_mot"] = torch.from_numpy(np.stack([s["emb_mot"] for s in samples]))
            motion = np.stack([s["motion"] for s in samples])  # (B, M)
            if stats is not None:
                motion = (motion - stats.motion_mean) / stats.motion_std
            batch["motion"] = torch.from_numpy(motion.astype(np.float32))
        return batch


@dataclass
class TrainStats:
    """One pass over the shard pairs: target standardisation and split sizes."""

    motion_mean: np.ndarray  # (M,) over training episodes
    motion_std: np.ndarray  # (M,); constant targets get 1 so they standardise to 0
    reward_mean: float
    reward_std: float
    num_train_samples: int
    num_heldout_samples: int
    train_episodes: list[int]
    heldout_episodes: list[int]
    heldout_shards: list[str]  # raw urls of the shards that hold held-out episodes


def _std(values: np.ndarray) -> np.ndarray:
    std = values.std(0)
    return np.where(std > 1e-6, std, 1.0)


def train_stats(urls: list[tuple[str, str | None]], split: EpisodeSplit) -> TrainStats:
    """Read every shard pair once (decoding only motion.npy and reward.npy) and count the split."""
    motions, rewards, train_eps, held_eps, held_shards = [], [], set(), set(), []
    num_held = 0
    for raw_url, ann_url in urls:
        has_heldout = False
        for raw, ann in iter_pairs(raw_url, ann_url):
            key = schema.parse_key(raw["__key__"])
            if split.is_heldout(key.episode):
                held_eps.add(key.episode)
                num_held += 1
                has_heldout = True
                continue
            train_eps.add(key.episode)
            schema.validate_raw_sample(raw, f"{raw_url}: ")
            rewards.append(float(decode_member(schema.REWARD, raw[schema.REWARD])))
            if ann is not None:
                schema.validate_ann_sample(ann, f"{ann_url}: ")
                motions.append(decode_member(schema.MOTION, ann[schema.MOTION]))
        if has_heldout:
            held_shards.append(raw_url)
    if not rewards:
        raise SemoreError(
            f"the dataset has no training episodes with holdout_every={split.holdout_every} "
            f"(held out: {sorted(held_eps)}): expected more episodes or a larger holdout_every"
        )
    motion = np.stack(motions).astype(np.float64) if motions else np.zeros((1, 0))  # (N, M)
    reward = np.asarray(rewards, dtype=np.float64)  # (N,)
    return TrainStats(
        motion_mean=motion.mean(0).astype(np.float32),
        motion_std=_std(motion).astype(np.float32),
        reward_mean=float(reward.mean()),
        reward_std=float(_std(reward)),
        num_train_samples=len(rewards),
        num_heldout_samples=num_held,
        train_episodes=sorted(train_eps),
        heldout_episodes=sorted(held_eps),
        heldout_shards=held_shards,
    )
