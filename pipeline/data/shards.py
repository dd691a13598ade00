"""Shard I/O: deterministic member encoding, atomic shard writing, checked sequential reading.

Shards are plain WebDataset tar files. Members are encoded here (not by webdataset's
encoder) with fixed tar metadata, so the same samples always give byte-identical shards;
that is what lets a rerun rewrite a missing shard identically and lets tests compare runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.data import schema
from pipeline.errors import SemoreError, first_line
from pipeline.lock import tmp_owner_gone

TMP_MARK = ".tmp-"  # in-progress shards: `.raw-000001.tar.tmp-<pid>`; never read as data
_FIXED_MTIME = 0  # reproducible tar headers (an int: a float adds a pax header per member)


def encode_member(name: str, value: object) -> bytes:
    """Encode one member by its extension (.png, .npy, .json, .txt); bytes pass through."""
    if isinstance(value, bytes):
        return value
    if name.endswith(".png"):
        buffer = io.BytesIO()
        # compress_level=1: ~3x faster than the default and only slightly larger on renders.
        Image.fromarray(np.asarray(value, dtype=np.uint8)).save(
            buffer, format="PNG", compress_level=1
        )
        return buffer.getvalue()
    if name.endswith(".npy"):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        return buffer.getvalue()
    if name.endswith(".json"):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    if name.endswith(".txt"):
        return str(value).encode()
    raise ValueError(f"cannot encode member {name!r}: expected .png, .npy, .json or .txt")


def encode_members(members: dict[str, object]) -> dict[str, bytes]:
    """Encode every member of a sample (lets callers buffer compact bytes, not arrays)."""
    return {name: encode_member(name, value) for name, value in members.items()}


def decode_member(name: str, data: bytes) -> object:
    """Inverse of :func:`encode_member`."""
    if name.endswith(".png"):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(data)
    if name.endswith(".txt"):
        return data.decode()
    return data


class AtomicShardWriter:
    """Write a shard under a temporary name; rename it into place only when complete.

    Used as a context manager: on an exception (Ctrl-C included) the temporary file is
    removed, so a dataset folder never holds a partial shard under a real shard name.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}{TMP_MARK}{os.getpid()}")
        self._stream = None
        self._writer = None
        self.num_samples = 0

    def __enter__(self) -> AtomicShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.tmp_path, "wb")
        self._writer = wds.TarWriter(self._stream, encoder=False, mtime=_FIXED_MTIME)
        return self

    def write(self, key: str, members: dict[str, object]) -> None:
        """Write one sample; values are encoded by their member names' extensions."""
        sample = {"__key__": key}
        sample.update(encode_members(members))
        self._writer.write(sample)
        self.num_samples += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
            self._stream.flush()
            os.fsync(self._stream.fileno())
        finally:
            self._stream.close()
        if exc_type is None:
            os.replace(self.tmp_path, self.path)
        else:
            self.tmp_path.unlink(missing_ok=True)


def remove_stale_tmp(folder: str | Path, shard_names: Iterable[str] | None = None) -> list[Path]:
    """Delete temporary shards left by a killed run; returns what was removed.

    With ``shard_names``, only those shards' temporaries go: other nodes of a multi-node
    job may be writing theirs into the same folder right now. Call it under the stage's
    lock on those shards (``pipeline.lock``); even then a temporary whose writer (the pid in
    its name) still runs on this host is kept: a worker of a killed parent may outlive it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if shard_names is None:
        found = folder.glob(f".*{TMP_MARK}*")
    else:
        found = (p for name in shard_names for p in folder.glob(f".{name}{TMP_MARK}*"))
    stale = sorted(p for p in found if tmp_owner_gone(p.name.rpartition(TMP_MARK)[2]))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def list_shards(folder: str | Path, prefix: str) -> list[Path]:
    """Complete shards ``prefix-NNNNNN.tar`` in ``folder``, sorted by index."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{prefix}-[0-9]*{schema.SHARD_SUFFIX}"), key=lambda p: p.name)


def open_remote(url: str) -> BinaryIO:
    """Open a shard URL for one sequential read (``hf://`` via huggingface_hub's HfFileSystem)."""
    import fsspec  # huggingface_hub registers the hf:// protocol with fsspec

    fs, path = fsspec.core.url_to_fs(url)
    # block_size=0: stream the file in one request instead of fetching it block by block
    return fs.open(path, "rb", block_size=0)


@contextlib.contextmanager
def _open_tar(path: str | Path, remote: bool) -> Iterator[tarfile.TarFile]:
    if not remote:
        with tarfile.open(path, mode="r|") as tar:
            yield tar
        return
    with open_remote(str(path)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        yield tar


def iter_shard(
    path: str | Path, decode: bool = True, num_samples: int | None = None
) -> Iterator[dict]:
    """Yield the samples of one shard (a local path or a URL) in order, grouping members by key.

    A truncated or corrupt tar raises ``SemoreError`` naming the shard and the last key read.
    A URL is read as a stream, without the local end-of-archive check: pass the manifest's
    ``num_samples`` to check that the whole shard arrived.
    """
    remote = "://" in str(path)
    path = str(path) if remote else Path(path)
    current: dict | None = None
    count = 0
    # fsspec backends raise their HTTP clients' own errors, which are not all OSErrors
    errors = Exception if remote else (tarfile.TarError, EOFError, OSError, ValueError)
    try:
        with _open_tar(path, remote) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, member = info.name.rsplit("/", 1)[-1].partition(".")
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError("unexpected end of data")
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key}
                    count += 1
                current[member] = decode_member(member, data) if decode else data
            end_offset = tar.offset
        # tarfile stops quietly at a corrupt header or a cut at a member boundary; a complete
        # tar ends with at least two zero blocks and has nothing but zeros after its members.
        if not remote:
            with open(path, "rb") as handle:
                handle.seek(end_offset)
                trailer = handle.read()
            if trailer.strip(b"\0"):
                raise tarfile.ReadError(f"invalid tar header at byte {end_offset}")
            if len(trailer) < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no end-of-archive marker after byte {end_offset}")
        if num_samples is not None and count != num_samples:
            raise tarfile.ReadError(f"{count} samples where the manifest lists {num_samples}")
    except errors as err:
        last = current["__key__"] if current else None
        if remote:
            reason = first_line(err)
            raise SemoreError(
                f"shard {path} is unreadable, corrupt or truncated after key {last!r} ({reason}): "
                "expected a complete WebDataset tar (check the network, HF_HUB_OFFLINE and "
                "your access to the repo)"
            ) from None
        raise SemoreError(
            f"shard {path} is corrupt or truncated after key {last!r} ({err}): "
            "expected a complete WebDataset tar; delete it and rerun the stage that wrote it"
        ) from None
    if current is not None:
        yield current
