"""The dataset manifest: what produced each part of a dataset, per-shard counts, totals.

``manifest.json`` has top-level ``format_version`` and ``semore_version`` and one section
per stage (``raw``, ``ann``). A section records the producing command, the resolved config
and its hash, the git revision and a ``shards`` table; it is rewritten atomically after
every completed shard, so it always describes exactly the complete shards on disk.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.data import schema
from pipeline.data.manifest_schema import check_manifest
from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from semore.checks import show


def manifest_path(root: str | Path) -> Path:
    return Path(root) / schema.MANIFEST_NAME


def manifest_where(root: str | Path) -> str:
    """How errors name a dataset's manifest: its path, or its URL for a remote dataset."""
    if "://" in str(root):  # a Path would collapse the URL's "//"
        return f"{str(root).rstrip('/')}/{schema.MANIFEST_NAME}"
    return str(manifest_path(root))


def config_hash(config: dict) -> str:
    """Stable short hash of a resolved config (sorted JSON)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_revision() -> str | None:
    """The source tree's git commit, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def new_manifest() -> dict:
    return {"format_version": schema.FORMAT_VERSION, "semore_version": __version__}


def read_manifest(root: str | Path, required: bool = True) -> dict | None:
    """Load and version-check ``root/manifest.json``.

    Returns None when it is absent and ``required`` is False.
    """
    path = manifest_path(root)
    if not path.is_file():
        if required:
            raise SemoreError(
                f"{path} not found: expected a Semore dataset folder (run semore-collect)"
            )
        return None
    return parse_manifest(path.read_bytes(), path)


def parse_manifest(data: bytes, where: str | Path) -> dict:
    """Parse and version-check a manifest's bytes; ``where`` (a path or URL) names it in errors."""
    # ValueError is also a number past Python's 4300-digit limit; RecursionError, deep nesting.
    try:
        manifest = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise SemoreError(
            f"{where} is not valid JSON ({err.__class__.__name__}): expected a manifest"
        ) from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise SemoreError(f"{where} has no format_version: expected a Semore manifest")
    found = manifest["format_version"]
    if found != schema.FORMAT_VERSION:
        raise SemoreError(
            f"{where} has format version {show(found)}: expected {schema.FORMAT_VERSION} "
            f"(written by semore {show(manifest.get('semore_version', '?'))}, this is {__version__})"
        )
    check_manifest(manifest, str(where))
    return manifest


def write_manifest(root: str | Path, manifest: dict) -> None:
    """Atomically replace ``root/manifest.json`` (untouched when the content is the same)."""
    path = manifest_path(root)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return
    atomic_write(path, text)


def section(manifest: dict, name: str, root: str | Path) -> dict:
    """The ``raw``/``ann`` section, or a one-line error naming what to run first."""
    if name not in manifest:
        stage = "semore-collect" if name == "raw" else "semore-annotate"
        raise SemoreError(f"{manifest_where(root)} has no '{name}' section: run {stage} first")
    return manifest[name]


def totals(shards: dict[str, dict]) -> dict:
    """Sum the per-shard integer counters of a ``shards`` table."""
    out: dict[str, float] = {"num_shards": len(shards)}
    for info in shards.values():
        for key, value in info.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out
