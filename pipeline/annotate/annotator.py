"""Annotating one raw shard: episodes -> keyframe captions -> cached embeddings -> ann shard.

A raw shard holds whole episodes with steps in order, so it is read sequentially one
episode at a time. Every ``keyframe_stride``-th step is captioned (with the sample
``motion_gap_steps`` earlier as the motion reference) and the captions are carried to the
following steps. The output depends only on the raw shard and the config: the caption
cache is emptied per shard, so a rerun or another worker writes byte-identical shards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.annotate.base import Caption, Captioner, Step
from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.text_encoders import CachedEncoder, TextEncoder, make_text_encoder
from pipeline.data import schema
from pipeline.data.shards import AtomicShardWriter, decode_member, iter_shard
from pipeline.errors import SemoreError

log = logging.getLogger(__name__)


class BadShardError(SemoreError):
    """A raw shard that cannot be read to the end (corrupt or truncated tar)."""


@dataclass
class _Item:
    """One readable raw sample of the episode being buffered."""

    key: str
    step: int
    state: dict
    motion: np.ndarray  # (len(schema.MOTION_TARGETS),) float32
    frame: np.ndarray | None  # (H, W, 3) uint8, only when the captioner needs pixels


@dataclass
class _Row:
    """One annotated sample, before its captions are embedded."""

    key: str
    captioned_step: int
    caption: Caption
    motion: np.ndarray


@dataclass
class ShardOutcome:
    """What a worker reports to the parent: the manifest entry, or why the shard was skipped."""

    raw_name: str
    ann_name: str
    info: dict = field(default_factory=dict)
    skipped_reason: str | None = None


def make_captioner(cfg: AnnotateConfig) -> Captioner:
    if cfg.captioner == "vlm":
        from pipeline.annotate.vlm import VLMCaptioner

        return VLMCaptioner(cfg.vlm, cfg.device)
    from pipeline.annotate.scene import SceneCaptioner

    return SceneCaptioner(cfg.scene)


def captioner_id(cfg: AnnotateConfig) -> str:
    """The captioner's manifest id, known without loading it."""
    from pipeline.annotate.scene import SCENE_VERSION

    return f"vlm:{cfg.vlm.model}" if cfg.captioner == "vlm" else f"scene-v{SCENE_VERSION}"


def prompt_hashes(cfg: AnnotateConfig) -> dict[str, str]:
    """Prompt name -> sha256 of its text ({} for the scene captioner)."""
    if cfg.captioner != "vlm":
        return {}
    from pipeline.annotate.vlm import load_prompt

    return {name: load_prompt(name)[1] for name in (cfg.vlm.semantic_prompt, cfg.vlm.motion_prompt)}


class Annotator:
    """A captioner plus a cached text encoder, applied shard by shard."""

    def __init__(self, cfg: AnnotateConfig, captioner: Captioner, encoder: TextEncoder):
        self.cfg = cfg
        self.captioner = captioner
        self.encoder = CachedEncoder(encoder)

    @classmethod
    def from_config(cls, cfg: AnnotateConfig, encoder: TextEncoder | None = None) -> Annotator:
        return cls(cfg, make_captioner(cfg), encoder or make_text_encoder(cfg))

    def run_shard(
        self,
        raw_path: Path,
        ann_path: Path,
        skip_bad: bool = False,
        expected_samples: int | None = None,
        on_samples: Callable[[int], None] | None = None,
    ) -> ShardOutcome:
        """Annotate ``raw_path`` into ``ann_path`` atomically.

        A bad sample (missing member, unreadable state) or an unreadable shard (including
        one that yields another number of samples than ``expected_samples``, the count the
        manifest lists) raises a one-line ``SemoreError``; with ``skip_bad`` the sample is
        left out (its key is listed in the outcome) or the whole shard is skipped (no ann
        shard is written).
        """
        outcome = ShardOutcome(raw_path.name, ann_path.name)
        try:
            outcome.info = self._write_shard(
                raw_path, ann_path, skip_bad, expected_samples, on_samples or (lambda n: None)
            )
        except BadShardError as err:
            if not skip_bad:
                raise
            log.warning("skipping shard: %s", err)
            outcome.skipped_reason = str(err)
        return outcome

    def _write_shard(
        self,
        raw_path: Path,
        ann_path: Path,
        skip_bad: bool,
        expected_samples: int | None,
        on_samples,
    ) -> dict:
        self.encoder.reset()
        retried_before = self.captioner.num_retried
        counts = {"captioned_steps": 0, "flagged_captions": 0}
        rows, episodes, skipped = self._caption_shard(
            raw_path, skip_bad, expected_samples, on_samples, counts
        )
        n = len(rows)
        self._write_rows(ann_path, rows)
        enc = self.encoder
        log.info(
            "%s: %d samples, %d captioned, %d caption lookups, %d encoded, cache hit rate %.1f%%",
            ann_path.name,
            n,
            counts["captioned_steps"],
            enc.lookups,
            enc.calls,
            100 * enc.hits / max(1, enc.lookups),
        )
        return {
            "num_samples": n,
            **counts,
            "raw_shard": raw_path.name,
            "num_episodes": len(episodes),
            "episodes": episodes,
            "caption_lookups": enc.lookups,
            "cache_hits": enc.hits,
            "encoder_calls": enc.calls,
            "retried_captions": self.captioner.num_retried - retried_before,
            "skipped_samples": len(skipped),
            "skipped_keys": skipped,
        }

    def _caption_shard(
        self,
        raw_path: Path,
        skip_bad: bool,
        expected_samples: int | None,
        on_samples,
        counts: dict,
    ) -> tuple[list[_Row], list[int], list[str]]:
        """The rows of a raw shard, captioned episode by episode, the episodes seen and the
        keys of the samples skipped (``skip_bad``)."""
        where = f"{raw_path}: "
        rows: list[_Row] = []
        episodes: list[int] = []
        skipped: list[str] = []
        buffer: list[_Item] = []
        current = None
        for sample in _read(raw_path, expected_samples):
            try:
                item, episode_id = self._item(sample, where)
            except SemoreError as err:
                if not skip_bad:
                    raise
                log.warning("skipping sample: %s", err)
                skipped.append(sample["__key__"])
                continue
            if buffer and episode_id != current:
                rows += self._caption_episode(buffer, counts)
                on_samples(len(buffer))
                buffer = []
            if not buffer:
                episodes.append(episode_id[2])
            current = episode_id
            buffer.append(item)
        if buffer:
            rows += self._caption_episode(buffer, counts)
            on_samples(len(buffer))
        return rows, episodes, skipped

    def _write_rows(self, ann_path: Path, rows: list[_Row]) -> None:
        """Embed the rows' captions and write them as the ann shard ``ann_path``."""
        # One encoder pass per shard: the most distinct captions per batch, in a fixed order.
        n = len(rows)
        embeddings = self.encoder.encode(
            [r.caption.semantic for r in rows] + [r.caption.motion for r in rows]
        )
        with AtomicShardWriter(ann_path) as writer:
            for i, row in enumerate(rows):
                writer.write(
                    row.key,
                    {
                        schema.CAPTION_SEM: row.caption.semantic,
                        schema.CAPTION_MOT: row.caption.motion,
                        schema.EMB_SEM: embeddings[i],
                        schema.EMB_MOT: embeddings[n + i],
                        schema.MOTION: row.motion,
                        schema.ANN_INFO: {
                            "captioned_step": row.captioned_step,
                            # "" (not null) when fine: the datasets webdataset loader
                            # cannot mix null and string values of a column across shards.
                            "sem_flag": row.caption.sem_flag or "",
                            "mot_flag": row.caption.mot_flag or "",
                        },
                    },
                )

    def _item(self, sample: dict, where: str) -> tuple[_Item, tuple]:
        """Decode what annotation needs from a raw sample; SemoreError if it is unusable."""
        key = sample["__key__"]
        schema.validate_raw_sample(sample, where)
        parsed = schema.parse_key(key)
        try:
            state = decode_member(schema.STATE, sample[schema.STATE])
            frame = None
            if self.captioner.needs_frames:
                if schema.RGB not in sample:
                    raise SemoreError(f"has no {schema.RGB}: expected the frame the VLM captions")
                frame = decode_member(schema.RGB, sample[schema.RGB])
        except SemoreError as err:
            raise SemoreError(f"{where}sample {key!r} {err}") from None
        except (ValueError, OSError) as err:  # bad JSON / PNG bytes
            raise SemoreError(
                f"{where}sample {key!r} has an unreadable member ({type(err).__name__}): expected valid JSON/PNG"
            ) from None
        if not isinstance(state, dict):
            raise SemoreError(
                f"{where}sample {key!r} {schema.STATE} holds a {type(state).__name__}: expected an object"
            )
        motion = schema.motion_targets(state, f"{where}sample {key!r} ")
        episode_id = (parsed.run, parsed.worker, parsed.episode)
        return _Item(key, parsed.step, state, motion, frame), episode_id

    def _caption_episode(self, items: list[_Item], counts: dict) -> list[_Row]:
        """Caption the keyframes of one episode and carry each caption to the following steps."""
        stride, gap = self.cfg.keyframe_stride, self.cfg.motion_gap_steps
        keyframes: list[int] = []
        for i, item in enumerate(items):
            if not keyframes or item.step - items[keyframes[-1]].step >= stride:
                keyframes.append(i)
        steps = []
        for i in keyframes:
            j = i  # the latest buffered sample at least `gap` steps earlier, else the first
            while j > 0 and items[i].step - items[j].step < gap:
                j -= 1
            steps.append(
                Step(items[i].key, items[i].state, items[j].state, items[i].frame, items[j].frame)
            )
        captions = self.captioner.caption(steps)
        if len(captions) != len(steps):
            raise SemoreError(
                f"captioner {self.captioner.id} returned {len(captions)} captions for {len(steps)} steps"
            )
        counts["captioned_steps"] += len(steps)
        counts["flagged_captions"] += sum(
            (c.sem_flag is not None) + (c.mot_flag is not None) for c in captions
        )
        rows, k = [], -1
        for i, item in enumerate(items):
            if k + 1 < len(keyframes) and keyframes[k + 1] == i:
                k += 1
            rows.append(_Row(item.key, items[keyframes[k]].step, captions[k], item.motion))
        return rows


def _read(raw_path: Path, expected_samples: int | None) -> Iterator[dict]:
    """Undecoded raw samples; an unreadable or short shard raises :class:`BadShardError`."""
    count = 0
    try:
        for sample in iter_shard(raw_path, decode=False):
            count += 1
            yield sample
    except SemoreError as err:
        raise BadShardError(str(err)) from None
    # A tar reader stops quietly at a corrupt header in mid-file: the count catches that.
    if expected_samples is not None and count != expected_samples:
        raise BadShardError(
            f"shard {raw_path} yields {count} samples but the manifest lists {expected_samples}: "
            "expected a complete shard (corrupt tar?); delete it and rerun semore-collect"
        )
