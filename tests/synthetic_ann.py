"""Annotation shards for a synthetic raw dataset, written without the annotate stage.

Captions come from the privileged state, so identical states give identical captions;
embeddings are deterministic unit vectors per unique caption (duplicates are identical,
as with a real text encoder); motion targets are read from the state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import dataset, schema
from pipeline import manifest as mf
from pipeline.shards import AtomicShardWriter, iter_shard


def semantic_caption(state: dict) -> str:
    lead = state["lead_distance_m"] if state.get("lead_present", True) else None
    lead_text = "no lead vehicle" if lead is None else f"lead {10 * round(lead / 10):.0f} m ahead"
    return f"{lead_text}, lane {state['lane_index']}"


def motion_caption(state: dict) -> str:
    accel = state["acceleration_mps2"]
    trend = "accelerating" if accel > 0.5 else "braking" if accel < -0.5 else "cruising"
    return f"ego {trend} at {5 * round(state['speed_mps'] / 5):.0f} m/s"


def caption_embedding(caption: str, embedding_dim: int) -> np.ndarray:
    """A unit vector that depends only on the caption text."""
    seed = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(embedding_dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def motion_targets(state: dict) -> np.ndarray:
    """``schema.MOTION_TARGETS`` in order, read from the state."""
    fields = [schema.MOTION_STATE_FIELDS[name] for name, _ in schema.MOTION_TARGETS]
    return np.array([state[field] for field in fields], dtype=np.float32)


def write_synthetic_ann(root: Path, embedding_dim: int = 16) -> Path:
    """Write ``ann/ann-NNNNNN.tar`` matching every raw shard, plus the manifest's ann section."""
    root = Path(root)
    manifest = mf.read_manifest(root)
    manifest["ann"] = {
        "captioner": "synthetic",
        "text_encoder": "synthetic-hash",
        "embedding_dim": embedding_dim,
        "motion_targets": [list(target) for target in schema.MOTION_TARGETS],
        "config_hash": "synthetic-ann",
        "shards": {},
    }
    mf.write_manifest(root, manifest)
    for raw_path in dataset.completed_shards(root, "raw"):
        name = schema.shard_name(schema.ANN_PREFIX, schema.shard_index(raw_path.name))
        with AtomicShardWriter(dataset.stage_dir(root, "ann") / name) as writer:
            for sample in iter_shard(raw_path):
                state = sample[schema.STATE]
                sem, mot = semantic_caption(state), motion_caption(state)
                writer.write(
                    sample["__key__"],
                    {
                        schema.CAPTION_SEM: sem,
                        schema.CAPTION_MOT: mot,
                        schema.EMB_SEM: caption_embedding(sem, embedding_dim),
                        schema.EMB_MOT: caption_embedding(mot, embedding_dim),
                        schema.MOTION: motion_targets(state),
                        schema.ANN_INFO: {"step": sample[schema.STEP]["step"], "empty": False},
                    },
                )
        dataset.record_shard(root, "ann", name, {"num_samples": writer.num_samples})
    return root
