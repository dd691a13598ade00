"""Tiny synthetic annotation shards for a synthetic raw dataset (tests of push, cards, inspect).

Written through the real shard/manifest code, following the data contract, so these tests
do not depend on the annotation stage's implementation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import dataset, schema
from pipeline import manifest as mf
from pipeline.shards import AtomicShardWriter, iter_shard


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def write_synthetic_ann(root: Path, embedding_dim: int = 8) -> Path:
    """Annotate every raw shard of ``root``: captions naming (episode, step), unit embeddings."""
    root = Path(root)
    manifest = mf.read_manifest(root)
    manifest["ann"] = {
        "command": "semore-annotate --data synthetic",
        "captioner": "scene-v1",
        "text_encoder": "sentence-transformers:synthetic-tiny",
        "prompts": {
            name: hashlib.sha256(name.encode()).hexdigest() for name in ("semantic", "motion")
        },
        "embedding_dim": embedding_dim,
        "motion_targets": [list(target) for target in schema.MOTION_TARGETS],
        "git_revision": None,
        "shards": {},
    }
    mf.write_manifest(root, manifest)
    for raw_path in dataset.completed_shards(root, "raw"):
        name = raw_path.name.replace(schema.RAW_PREFIX, schema.ANN_PREFIX, 1)
        num_samples = 0
        with AtomicShardWriter(root / schema.ANN_DIR / name) as writer:
            for sample in iter_shard(raw_path):
                key = schema.parse_key(sample["__key__"])
                state = sample[schema.STATE]
                rng = np.random.default_rng(key.episode * 1000 + key.step)
                members = {
                    schema.CAPTION_SEM: f"episode {key.episode} step {key.step}: ego in lane {state['lane_index']}",
                    schema.CAPTION_MOT: f"ego drives at {state['speed_mps']:.0f} m/s",
                    schema.EMB_SEM: _unit(rng.normal(size=embedding_dim)),
                    schema.EMB_MOT: _unit(rng.normal(size=embedding_dim)),
                    schema.MOTION: np.array(
                        [
                            state["speed_mps"],
                            state["acceleration_mps2"],
                            state["yaw_rate_radps"],
                            state["lat_speed_mps"],
                        ],
                        dtype=np.float32,
                    ),
                    schema.ANN_INFO: {
                        "captioned_step": key.step,
                        "sem_empty": False,
                        "mot_empty": False,
                    },
                }
                writer.write(sample["__key__"], members)
                num_samples += 1
        # Like the annotate stage, shard entries carry counts only (no episode lists).
        dataset.record_shard(root, "ann", name, {"num_samples": num_samples, "empty_captions": 0})
    return root
