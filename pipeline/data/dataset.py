"""Dataset folders: raw step members, manifest sections, the shards a stage has completed."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.errors import SemoreError


def raw_members(
    frames: dict[str, np.ndarray], action: np.ndarray, reward: float, state: dict, step_info: dict
) -> dict[str, object]:
    """The members of one raw sample (before encoding)."""
    members: dict[str, object] = {}
    for name, frame in frames.items():
        members[schema.RGB if name == "rgb" else f"{schema.CAMERA_PREFIX}{name}.png"] = frame
    members[schema.ACTION] = np.asarray(action, dtype=np.float32)
    members[schema.REWARD] = np.asarray(reward, dtype=np.float32)
    members[schema.STATE] = state
    members[schema.STEP] = step_info
    return members


def step_info(
    episode: int,
    step: int,
    is_last: bool,
    terminated: bool,
    truncated: bool,
    seed: int,
    policy: str,
) -> dict:
    """``step.json``: episode bookkeeping for one step (see ``schema.STEP_FIELDS``)."""
    return {
        "episode": episode,
        "step": step,
        "is_first": step == 0,
        "is_last": is_last,
        "is_terminal": terminated,
        "truncated": truncated,
        "episode_seed": seed,
        "policy": policy,
    }


@contextlib.contextmanager
def manifest_lock(root: str | Path) -> Iterator[None]:
    """Serialise manifest read-modify-writes across processes and nodes (flock on a side file)."""
    lock_path = Path(root) / ".manifest.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_shard(
    root: str | Path, section_name: str, shard: str, info: dict, section_fields: dict | None = None
) -> dict:
    """Add a completed shard's counts to the manifest section and rewrite it atomically.

    ``section_fields`` are set on the section too (facts only known once data exists,
    such as the camera names and image size a backend produced).
    """
    with manifest_lock(root):
        manifest = mf.read_manifest(root)
        section = mf.section(manifest, section_name, root)
        section.update(section_fields or {})
        section.setdefault("shards", {})[shard] = info
        section["shards"] = dict(sorted(section["shards"].items()))
        section["totals"] = mf.totals(section["shards"])
        mf.write_manifest(root, manifest)
    return manifest


def stage_dir(root: str | Path, section_name: str) -> Path:
    return Path(root) / (schema.RAW_DIR if section_name == "raw" else schema.ANN_DIR)


def completed_shards(root: str | Path, section_name: str) -> list[Path]:
    """Shards the manifest lists as complete, checked to exist on disk, in index order."""
    manifest = mf.read_manifest(root)
    section = mf.section(manifest, section_name, root)
    folder = stage_dir(root, section_name)
    paths = []
    for name in sorted(section.get("shards", {})):
        path = folder / name
        if not path.is_file():
            raise SemoreError(
                f"{path} is listed in {mf.manifest_path(root)} but missing: "
                f"expected every listed shard on disk (rerun the stage to rewrite it)"
            )
        paths.append(path)
    if not paths:
        raise SemoreError(f"{folder} holds no complete shards: expected at least one")
    return paths
