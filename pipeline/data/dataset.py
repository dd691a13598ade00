"""Dataset folders: raw step members, manifest sections, the shards a stage has completed."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.data import manifest as mf
from pipeline.data import manifest_schema as ms
from pipeline.data import schema
from pipeline.errors import SemoreError, first_line


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


def completed_shards(root: str | Path, section_name: str, check_files: bool = True) -> list[Path]:
    """Shards the manifest lists as complete, checked to exist on disk and (``check_files``)
    to hold what the manifest lists: sample counts and episodes, for annotations their raw
    shard's keys. In index order. ``semore-annotate`` reads raw shards whole and checks them
    shard by shard itself, so that ``--skip-bad`` can skip a damaged one."""
    manifest = mf.read_manifest(root)
    section = mf.section(manifest, section_name, root)
    folder = stage_dir(root, section_name)
    paths = []
    for name in sorted(section[ms.SHARDS]):
        path = folder / name
        if not path.is_file():
            raise SemoreError(
                f"{path} is listed in {mf.manifest_path(root)} but missing: "
                f"expected every listed shard on disk (rerun the stage to rewrite it)"
            )
        paths.append(path)
    if not paths:
        raise SemoreError(f"{folder} holds no complete shards: expected at least one")
    if not check_files:
        return paths
    if section_name == ms.RAW:
        for path in paths:
            check_raw_shard(root, manifest, path.name)
    else:
        check_annotations(root, manifest)
    return paths


def shard_keys(path: Path) -> tuple[str, ...]:
    """The sample keys of a local shard in order, from its tar headers alone (~0.1 ms per
    sample; cached per version of the file, so every check of a run reads a shard once)."""
    stat = path.stat()
    return _shard_keys(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _shard_keys(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    keys: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    key = info.name.rsplit("/", 1)[-1].partition(".")[0]
                    if not keys or keys[-1] != key:
                        keys.append(key)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise SemoreError(
            f"shard {path} is corrupt or truncated ({first_line(err)}): expected a complete "
            "WebDataset tar; delete it and rerun the stage that wrote it"
        ) from None
    seen: set[str] = set()
    repeated = next((key for key in keys if key in seen or seen.add(key)), None)
    if repeated is not None:
        raise SemoreError(
            f"shard {path} holds key {repeated!r} twice apart: expected each sample's members "
            "together, once"
        )
    return tuple(keys)


def raw_shard_problem(path: Path, entry: dict) -> str | None:
    """How raw shard ``path`` disagrees with its manifest ``entry`` (sample count, episodes
    of its keys), or None."""
    keys = shard_keys(path)
    if len(keys) != entry[ms.NUM_SAMPLES]:
        return f"holds {len(keys)} samples where the manifest lists {entry[ms.NUM_SAMPLES]}"
    episodes = set()
    for key in keys:
        try:
            episodes.add(schema.parse_key(key).episode)
        except SemoreError as err:
            return f"has a malformed key ({err})"
    if episodes != set(entry[ms.EPISODES]):
        return (
            f"holds episodes {_span(sorted(episodes))} where the manifest lists "
            f"{_span(sorted(entry[ms.EPISODES]))}"
        )
    return None


def _span(values: list[int]) -> str:
    return f"{values[:4]}{'...' if len(values) > 4 else ''} ({len(values)})"


def check_raw_shard(root: str | Path, manifest: dict, name: str) -> None:
    """One-line error when the raw shard ``name`` on disk is not what the manifest lists."""
    path = stage_dir(root, ms.RAW) / name
    problem = raw_shard_problem(path, manifest[ms.RAW][ms.SHARDS][name])
    if problem is not None:
        raise SemoreError(
            f"{path} {problem} ({mf.manifest_path(root)}): expected the shard the manifest "
            "lists (delete the shard and rerun semore-collect)"
        )


def check_annotations(root: str | Path, manifest: dict, names: list[str] | None = None) -> None:
    """One-line error when an annotation shard (all listed ones on disk, or ``names``) does
    not annotate its raw shard: the manifest's counts, then every key in order."""
    where = mf.manifest_path(root)
    if names is None:
        ms.check_pairing(manifest, str(where))
        names = sorted(manifest[ms.ANN][ms.SHARDS])
    ann_dir, raw_dir = stage_dir(root, ms.ANN), stage_dir(root, ms.RAW)
    for name in names:
        ann_path = ann_dir / name
        raw_path = raw_dir / schema.shard_name(schema.RAW_PREFIX, schema.shard_index(name))
        if not ann_path.is_file():
            continue  # listed but gone: completed_shards says so, annotate redoes it
        if not raw_path.is_file():
            raise SemoreError(f"{raw_path} is missing: expected the raw shard {ann_path} annotates")
        entry = manifest[ms.ANN][ms.SHARDS][name]
        skipped = set(entry.get(ms.SKIPPED_KEYS, ()))
        expected = [key for key in shard_keys(raw_path) if key not in skipped]
        found = list(shard_keys(ann_path))
        if found != expected or len(found) != entry[ms.NUM_SAMPLES]:
            i = next(
                (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b), None
            )
            detail = (
                f"annotation key {found[i]!r} where raw key {expected[i]!r} was expected"
                if i is not None
                else f"{len(found)} annotation keys for {len(expected)} raw keys "
                f"({entry[ms.NUM_SAMPLES]} listed in {where})"
            )
            raise SemoreError(
                f"{ann_path} does not match {raw_path}: {detail}; expected the same keys in "
                f"the same order (delete {ann_path} and rerun semore-annotate)"
            )
