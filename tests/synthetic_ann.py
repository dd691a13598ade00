"""Annotation shards for a synthetic raw dataset, written by the real annotate stage.

The scene captioner and the annotate writer are the real ones, so these fixtures cannot drift
from what ``semore-annotate`` writes; only the text encoder is replaced by a tiny
deterministic one (a unit vector per caption text, so duplicates embed identically, as with a
real text encoder), so no model loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.annotate.annotator import Annotator
from pipeline.annotate.config import AnnotateConfig, SceneConfig
from pipeline.annotate.run import annotate
from pipeline.annotate.scene import SceneCaptioner
from pipeline.data import schema


def caption_embedding(caption: str, embedding_dim: int) -> np.ndarray:
    """A unit vector that depends only on the caption text."""
    seed = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(embedding_dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class HashTextEncoder:
    """A text encoder (``TextEncoder`` protocol) with no weights: :func:`caption_embedding`."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.name = f"hash-test-{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([caption_embedding(text, self.dim) for text in texts])


def semantic_caption(state: dict) -> str:
    """What the scene captioner writes for ``state`` (default settings)."""
    return SceneCaptioner(SceneConfig()).semantic(state)


def motion_targets(state: dict) -> np.ndarray:
    """``motion.npy`` of ``state``, as the annotate stage reads it."""
    return schema.motion_targets(state)


def write_synthetic_ann(root: Path, embedding_dim: int = 16) -> Path:
    """Annotate every raw shard of ``root`` with the scene captioner and hash embeddings."""
    cfg = AnnotateConfig()
    annotator = Annotator(cfg, SceneCaptioner(cfg.scene), HashTextEncoder(embedding_dim))
    annotate(cfg, Path(root), progress=False, annotator=annotator)
    return Path(root)
