"""Where a dataset lives and which shard pairs it has: a local folder or a Hub dataset repo.

``--data`` is a local folder or ``hf://datasets/ORG/NAME[@REVISION]`` (as written by
``semore-push``), whose shards are streamed rather than downloaded. A shard pair
``(raw-NNNNNN.tar, ann-NNNNNN.tar)`` is read sequentially in lockstep and joined by sample key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from urllib.parse import quote, unquote

from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data import manifest_schema as ms
from pipeline.data.shards import iter_shard
from pipeline.errors import SemoreError, first_line

HUB_PREFIX = "hf://datasets/"
# --data hf://datasets/ORG/NAME[@REVISION]; "hf:/" too, as a Path collapses the "//"
_HUB_DATA = re.compile(r"hf:/+datasets/(?P<repo_id>[\w.-]+/[\w.-]+)(?:@(?P<revision>.+?))?/?")


@dataclass(frozen=True)
class HubRepo:
    """A dataset repo on the Hugging Face Hub, read by streaming its shards."""

    repo_id: str  # ORG/NAME
    revision: str  # branch, tag or commit

    @property
    def url(self) -> str:
        """``hf://datasets/ORG/NAME@REV``: the base of the file URLs fsspec's hf:// reads."""
        return f"{HUB_PREFIX}{self.repo_id}@{quote(self.revision, safe='')}"

    def read_manifest(self) -> dict:
        """Fetch ``manifest.json`` (a small file, cached by huggingface_hub) and check it."""
        from huggingface_hub import errors, hf_hub_download

        where = mf.manifest_where(self.url)
        try:
            path = hf_hub_download(
                self.repo_id, schema.MANIFEST_NAME, repo_type="dataset", revision=self.revision
            )
        except errors.RepositoryNotFoundError:  # also what a private repo without access gives
            raise SemoreError(
                f"dataset repo {self.repo_id} not found on the Hugging Face Hub or not readable: "
                "expected a dataset pushed with semore-push (for a private repo, a token with "
                "read access: HF_TOKEN or `hf auth login`)"
            ) from None
        except errors.RevisionNotFoundError:
            raise SemoreError(
                f"dataset repo {self.repo_id} has no revision {self.revision!r}: expected a "
                "branch, tag or commit of it"
            ) from None
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
            raise SemoreError(
                f"cannot reach the Hugging Face Hub for {where} and it is not cached: expected "
                "network access to stream the dataset (is HF_HUB_OFFLINE set?)"
            ) from None
        except errors.EntryNotFoundError:
            raise SemoreError(
                f"{where} not found: expected a Semore dataset pushed with semore-push"
            ) from None
        except OSError as err:  # other HTTP and connection errors
            raise SemoreError(
                f"cannot read {where} ({first_line(err)}): expected a readable Hugging Face Hub dataset"
            ) from None
        return mf.parse_manifest(Path(path).read_bytes(), where)


# Where ``--data`` points: a local dataset folder or a Hub dataset repo.
DatasetSource = Path | HubRepo


def _hub_repo(url: str) -> HubRepo | None:
    match = _HUB_DATA.fullmatch(url)
    if match is None:
        return None
    return HubRepo(match["repo_id"], unquote(match["revision"] or "main"))


def _source(data: str | Path) -> DatasetSource:
    """The dataset ``--data`` names; the single place to extend for other remote datasets."""
    hub = _hub_repo(str(data))
    if hub is not None:
        return hub
    if "://" in str(data) or str(data).startswith("hf:/"):
        raise SemoreError(
            f"--data {data} is not a dataset URL this reads: expected a local dataset folder "
            "or hf://datasets/ORG/NAME[@REVISION]"
        )
    root = Path(data)
    if not root.is_dir():
        raise SemoreError(f"--data {root} is not a folder: expected a Semore dataset folder")
    return root


def _location(source: DatasetSource) -> Path | str:
    """The folder, or the repo's ``hf://`` URL: what names the dataset in errors and exports."""
    return source.url if isinstance(source, HubRepo) else source


def _read_manifest(source: DatasetSource) -> dict:
    return source.read_manifest() if isinstance(source, HubRepo) else mf.read_manifest(source)


def _completed_shards(source: DatasetSource, manifest: dict, section_name: str) -> list[str]:
    """URLs (or paths) of the shards the manifest lists as complete, in index order."""
    if isinstance(source, Path):
        return [str(path) for path in dataset.completed_shards(source, section_name)]
    # The Hub holds what semore-push uploaded: the shards the manifest lists.
    section = mf.section(manifest, section_name, source.url)
    folder = f"{source.url}/{schema.RAW_DIR if section_name == 'raw' else schema.ANN_DIR}"
    urls = [f"{folder}/{name}" for name in sorted(section.get("shards", {}))]
    if not urls:
        raise SemoreError(f"{folder} holds no complete shards: expected at least one")
    return urls


# A manifest section's record of how it was made, not of what it holds (left out of
# ``content_sha256``).
PROVENANCE_KEYS = ("command", "git_revision")


@dataclass(frozen=True)
class DatasetInfo:
    """What a consumer of a dataset needs to size its model, read from the manifest."""

    root: Path | str  # the dataset folder, or hf://datasets/ORG/NAME@REV
    manifest: dict
    image_height: int
    image_width: int
    action_dim: int
    embedding_dim: int | None  # None when the dataset has no annotations
    motion_targets: tuple[tuple[str, str], ...]  # (name, unit) per motion.npy entry

    def dataset_id(self) -> dict:
        """Identifies exactly which data a model saw (stored in exports). ``content_sha256``
        leaves out how the data was made (the command, the git revision), so a dataset rebuilt
        with the same configs on a fresh checkout, sample for sample the same, keeps it."""
        raw = self.manifest.get("raw", {})
        ann = self.manifest.get("ann", {})
        text = json.dumps(self.manifest, sort_keys=True).encode()
        content = {
            name: {k: v for k, v in part.items() if k not in PROVENANCE_KEYS}
            if isinstance(part, dict)
            else part
            for name, part in self.manifest.items()
        }
        content_text = json.dumps(content, sort_keys=True).encode()
        return {
            "path": str(self.root),
            "manifest_sha256": hashlib.sha256(text).hexdigest()[:16],
            "content_sha256": hashlib.sha256(content_text).hexdigest()[:16],
            "raw_config_hash": raw.get("config_hash"),
            "ann_config_hash": ann.get("config_hash"),
            "num_samples": raw.get("totals", {}).get("num_samples"),
        }


def read_dataset_info(data: str | Path, with_ann: bool = True) -> DatasetInfo:
    """Check the manifest (format version, sections) and return the dataset's dimensions."""
    source = _source(data)
    root = _location(source)
    manifest = _read_manifest(source)
    raw = mf.section(manifest, "raw", root)
    ann = mf.section(manifest, "ann", root) if with_ann else manifest.get("ann")
    for name in ("image_height", "image_width", "action_names"):
        if name not in raw:
            raise SemoreError(
                f"{mf.manifest_where(root)} raw section has no {name!r}: expected it once a "
                "shard is recorded"
            )
    motion_targets: tuple[tuple[str, str], ...] = ()
    embedding_dim = None
    if ann is not None:
        embedding_dim = int(ann.get("embedding_dim", 0)) or None
        motion_targets = tuple(
            (str(n), str(u)) for n, u in ann.get("motion_targets", schema.MOTION_TARGETS)
        )
        if with_ann and embedding_dim is None:
            raise SemoreError(
                f"{mf.manifest_where(root)} ann section has no embedding_dim: expected a "
                "positive integer (rerun semore-annotate)"
            )
    return DatasetInfo(
        root=root,
        manifest=manifest,
        image_height=int(raw["image_height"]),
        image_width=int(raw["image_width"]),
        action_dim=len(raw["action_names"]),
        embedding_dim=embedding_dim,
        motion_targets=motion_targets,
    )


def shard_urls(data: str | Path, with_ann: bool = True) -> list[tuple[str, str | None]]:
    """``[(raw_url, ann_url), ...]`` in shard order; ann_url is None when ``with_ann`` is False.

    Raw and annotation shards must pair up one to one (same index, same sample count).
    """
    source = _source(data)
    manifest = _read_manifest(source)
    raw_urls = _completed_shards(source, manifest, "raw")
    if not with_ann:
        return [(url, None) for url in raw_urls]
    ann_urls = _completed_shards(source, manifest, "ann")
    ms.check_pairing(manifest, mf.manifest_where(_location(source)))
    raw_table, ann_table = manifest["raw"]["shards"], manifest["ann"]["shards"]
    if len(raw_urls) != len(ann_urls):
        raise SemoreError(
            f"{mf.manifest_where(_location(source))} lists {len(raw_urls)} raw shards and "
            f"{len(ann_urls)} annotation shards: expected one annotation shard per raw shard "
            "(run semore-annotate)"
        )
    pairs = []
    for raw_url, ann_url in zip(raw_urls, ann_urls, strict=True):
        raw_name, ann_name = raw_url.rsplit("/", 1)[-1], ann_url.rsplit("/", 1)[-1]
        raw_count = raw_table[raw_name].get("num_samples")
        ann_count = ann_table[ann_name].get("num_samples")
        if schema.shard_index(raw_name) != schema.shard_index(ann_name) or raw_count != ann_count:
            raise SemoreError(
                f"{ann_url} ({ann_count} samples) does not pair with {raw_url} ({raw_count} "
                "samples): expected the same index and sample count (rerun semore-annotate)"
            )
        pairs.append((raw_url, ann_url))
    return pairs


def iter_shard_samples(url: str) -> Iterator[dict]:
    """Samples of one shard, members as undecoded bytes, in order.

    A Hub shard is streamed, so the manifest's sample count is what checks it arrived whole.
    """
    if not url.startswith(HUB_PREFIX):
        return iter_shard(url, decode=False)
    base, folder, name = url.rsplit("/", 2)
    section_name = "raw" if folder == schema.RAW_DIR else "ann"
    shards = _hub_repo(base).read_manifest()[section_name].get("shards", {})
    return iter_shard(url, decode=False, num_samples=shards.get(name, {}).get("num_samples"))


def iter_pairs(raw_url: str, ann_url: str | None) -> Iterator[tuple[dict, dict | None]]:
    """Raw samples joined with their annotation samples by key, read in lockstep."""
    if ann_url is None:
        for raw in iter_shard_samples(raw_url):
            yield raw, None
        return
    for raw, ann in zip_longest(iter_shard_samples(raw_url), iter_shard_samples(ann_url)):
        raw_key = raw["__key__"] if raw is not None else None
        ann_key = ann["__key__"] if ann is not None else None
        if raw_key != ann_key:
            raise SemoreError(
                f"{ann_url} does not match {raw_url}: annotation key {ann_key!r} where raw key "
                f"{raw_key!r} was expected (same keys in the same order; rerun semore-annotate)"
            )
        yield raw, ann
