"""Frame-stack windows and batches from shard pairs (pretraining and the linear probe).

Frame stacks are rebuilt while reading (episodes are never split across shards and steps
are in order), so shuffling can happen afterwards without breaking them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.data import schema
from pipeline.data.shards import decode_member
from pipeline.data.source import iter_pairs
from pipeline.errors import SemoreError

# State fields every window carries as floats (NaN where a dataset lacks them): what the
# linear probe reads out of the frozen representation.
STATE_TARGETS = ("speed_mps", "lead_distance_m", "lane_index", "lateral_offset_m", "heading_rad")


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
    return schema.LEAD_RANGE_M if value is None else min(value, schema.LEAD_RANGE_M)


def _float_or_nan(value: object) -> float:
    return math.nan if value is None else float(value)


class Frame:
    """One recorded frame: its PNG bytes, decoded at most once.

    The windows of an episode share their frames, so a frame is decoded once for all the
    stacks it is in, and only when the first of them is decoded (a skipped window costs no
    decoding). The decoded array lives as long as a window that holds the frame.
    """

    __slots__ = ("key", "png", "array")

    def __init__(self, key: str, png: bytes) -> None:
        self.key = key
        self.png = png
        self.array: np.ndarray | None = None

    def decode(self, image_hw: tuple[int, int] | None, where: str) -> np.ndarray:
        if self.array is None:
            frame = decode_member(schema.RGB, self.png)  # (H, W, 3) uint8
            if image_hw is not None and frame.shape[:2] != tuple(image_hw):
                raise SemoreError(
                    f"{where}sample {self.key!r} has a {frame.shape[0]}x{frame.shape[1]} frame: "
                    f"expected {image_hw[0]}x{image_hw[1]} as in the manifest"
                )
            self.array, self.png = frame, b""
        return self.array


@dataclass
class Window:
    """A frame stack and its sample's members, not yet decoded (what a shuffle buffer holds)."""

    raw: dict
    ann: dict | None
    key: schema.SampleKey
    frames: tuple[Frame, ...]  # the latest frame_stack frames, oldest first
    image_hw: tuple[int, int] | None
    where: str

    def decode(self) -> dict:
        """The windowed sample: decoded frames, action, reward, state targets, annotations."""
        return _decode(self)


def iter_windows(
    pairs: Iterable[tuple[dict, dict | None]],
    frame_stack: int,
    keep_episode: Callable[[int], bool] = EpisodeSplit(0),
    image_hw: tuple[int, int] | None = None,
    where: str = "",
    lazy: bool = False,
) -> Iterator[dict] | Iterator[Window]:
    """Decoded samples with ``frames``: the latest ``frame_stack`` frames, oldest first.

    At an episode's start the first frame is repeated; stacks never cross episodes.
    Episodes that ``keep_episode`` rejects are skipped without decoding. ``lazy`` yields
    :class:`Window` objects instead, decoded later by ``Window.decode`` (after a shuffle).
    """
    history: deque[Frame] = deque(maxlen=frame_stack)
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
        if schema.RGB not in raw:
            schema.validate_raw_sample(raw, where)  # names what else is missing first
            raise SemoreError(f"{where}sample {raw['__key__']!r} has no {schema.RGB}")
        frame = Frame(raw["__key__"], raw[schema.RGB])
        if history:
            history.append(frame)
        else:
            history.extend([frame] * history.maxlen)
        window = Window(raw, ann, key, tuple(history), image_hw, where)
        yield window if lazy else window.decode()


def _decode(window: Window) -> dict:
    raw, ann, key, where = window.raw, window.ann, window.key, window.where
    schema.validate_raw_sample(raw, where)
    frames = tuple(frame.decode(window.image_hw, where) for frame in window.frames)
    state = decode_member(schema.STATE, raw[schema.STATE])
    sample = {
        "episode": key.episode,
        "step": key.step,
        "frames": frames,
        "action": decode_member(schema.ACTION, raw[schema.ACTION]).astype(np.float32),
        "reward": float(decode_member(schema.REWARD, raw[schema.REWARD])),
        "caption_state": schema.caption_state(state),
        "lead_distance_m": _lead_distance(state),
        **{
            name: _float_or_nan(state.get(name))
            for name in STATE_TARGETS
            if name != "lead_distance_m"
        },
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
    """Pipeline stage: ``{"url": raw_url}`` items in, windowed samples out (picklable).

    ``lazy`` yields undecoded :class:`Window` objects (see :func:`iter_windows`).
    """

    def __init__(
        self,
        ann_by_raw: dict[str, str | None],
        frame_stack: int,
        keep_episode: Callable[[int], bool],
        image_hw: tuple[int, int] | None = None,
        lazy: bool = False,
    ) -> None:
        self.ann_by_raw = ann_by_raw
        self.frame_stack = frame_stack
        self.keep_episode = keep_episode
        self.image_hw = image_hw
        self.lazy = lazy

    def __call__(self, source: Iterable[dict]) -> Iterator[dict] | Iterator[Window]:
        for item in source:
            raw_url = item["url"]
            pairs = iter_pairs(raw_url, self.ann_by_raw[raw_url])
            yield from iter_windows(
                pairs,
                self.frame_stack,
                self.keep_episode,
                self.image_hw,
                where=f"{raw_url}: ",
                lazy=self.lazy,
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
        for name in ("reward", *STATE_TARGETS):
            batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.float32)
        stats = self.stats
        caption_state = np.stack([s["caption_state"] for s in samples])  # (B, S)
        if stats is not None:
            batch["reward"] = (batch["reward"] - stats.reward_mean) / stats.reward_std
            caption_state = (caption_state - stats.state_mean) / stats.state_std
        # A field the data lacks is 0 after standardisation: no gradient, no NaN.
        batch["caption_state"] = torch.from_numpy(np.nan_to_num(caption_state).astype(np.float32))
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
    state_mean: np.ndarray  # (S,) of schema.caption_state over training samples
    state_std: np.ndarray
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
    motions, rewards, states, train_eps, held_eps, held_shards = [], [], [], set(), set(), []
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
            states.append(schema.caption_state(decode_member(schema.STATE, raw[schema.STATE])))
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
    state = np.stack(states).astype(np.float64)  # (N, S), NaN where a field is missing
    finite = np.isfinite(state)
    count = np.maximum(finite.sum(0), 1)
    state_mean = np.where(finite, state, 0.0).sum(0) / count
    state_std = np.sqrt((np.where(finite, state - state_mean, 0.0) ** 2).sum(0) / count)
    return TrainStats(
        motion_mean=motion.mean(0).astype(np.float32),
        motion_std=_std(motion).astype(np.float32),
        reward_mean=float(reward.mean()),
        reward_std=float(_std(reward)),
        state_mean=state_mean.astype(np.float32),
        state_std=np.where(state_std > 1e-6, state_std, 1.0).astype(np.float32),
        num_train_samples=len(rewards),
        num_heldout_samples=num_held,
        train_episodes=sorted(train_eps),
        heldout_episodes=sorted(held_eps),
        heldout_shards=held_shards,
    )
