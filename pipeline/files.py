"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_save(path: str | Path, save: Callable[[BinaryIO], object]) -> Path:
    """Call ``save(handle)`` on a temporary file beside ``path``, fsync it, then rename it.

    The temporary name starts with a dot and holds the pid, so concurrent writers and
    listings of the folder never pick it up; a failed ``save`` removes it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_save(path, lambda handle: handle.write(payload))
