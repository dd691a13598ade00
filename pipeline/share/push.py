"""``semore-push``: publish a dataset (raw + annotation shards + generated card) on the Hub.

The dataset is validated, its card is written to ``DIR/README.md``, and ``manifest.json``,
``README.md`` and the complete shards listed in the manifest go to a Hugging Face Hub
dataset repo (``upload_folder``: with ``hf_xet`` it streams large folders in several commits
and a rerun resumes an interrupted upload) -- or, with ``--local-dir``, the same layout is
copied to a folder without any network access. Temporary shards and locks are never sent.

``--release`` also copies the card to ``datasets_cards/NAME-vN.md`` of the source checkout
(or ``--cards-dir``), the repository's record of released versions. It is opt-in so that
test pushes to scratch repos add no tracked files, and a released card is immutable: a
different card for a version that already has one is refused (publish ``-vN+1`` instead).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data.shards import TMP_MARK
from pipeline.errors import SemoreError, first_line
from pipeline.files import atomic_save
from pipeline.lock import FolderLock
from pipeline.share import card as cards

log = logging.getLogger(__name__)

NO_TOKEN = "no Hugging Face token: expected --token, HF_TOKEN or `hf auth login`"
# Never uploaded even if a pattern matched them: in-progress shards, lock and temp files.
EXCLUDE_PATTERNS = [f"*{TMP_MARK}*", "*.lock", ".*", "*/.*"]
_TAR_END = 1024  # a complete tar ends with two 512-byte zero blocks


def check_dataset(data_dir: str | Path) -> dict:
    """Validate a dataset folder for publishing; return its manifest.

    Checks the format version, that every shard the manifest lists is on disk and ends like
    a complete tar, and, when there are annotations, that they cover every raw shard with
    the same sample counts.
    """
    data_dir = Path(data_dir)
    manifest = mf.read_manifest(data_dir)
    raw = mf.section(manifest, "raw", data_dir)
    for path in dataset.completed_shards(data_dir, "raw"):
        _check_tar_end(path)
    wanted = (raw.get("config") or {}).get("episodes")
    have = raw.get("totals", {}).get("num_episodes", 0)
    if isinstance(wanted, int) and have < wanted:
        log.warning(
            "%s holds %d of the %d episodes first requested; publishing those",
            data_dir,
            have,
            wanted,
        )
    _warn_unlisted(data_dir, schema.RAW_DIR, schema.RAW_PREFIX, raw)
    if "ann" in manifest:
        _check_annotations(data_dir, raw, manifest["ann"])
    return manifest


def _check_tar_end(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - _TAR_END))
        tail = handle.read()
    if size < _TAR_END or size % 512 or tail != bytes(_TAR_END):
        raise SemoreError(
            f"shard {path} is truncated ({size} bytes): expected a complete tar; "
            "delete it and rerun the stage that wrote it"
        )


def _warn_unlisted(data_dir: Path, folder: str, prefix: str, section: dict) -> None:
    listed = set(section.get("shards", {}))
    for path in sorted((data_dir / folder).glob(f"{prefix}-*{schema.SHARD_SUFFIX}")):
        if path.name not in listed:
            log.warning(
                "%s is not in the manifest (an interrupted run?); it is not published", path
            )


def _check_annotations(data_dir: Path, raw: dict, ann: dict) -> None:
    where = mf.manifest_path(data_dir)
    raw_shards = raw.get("shards", {})
    ann_shards = ann.get("shards", {})
    for raw_name, raw_info in sorted(raw_shards.items()):
        name = schema.shard_name(schema.ANN_PREFIX, schema.shard_index(raw_name))
        if name not in ann_shards:
            raise SemoreError(
                f"{where} lists {len(ann_shards)} of {len(raw_shards)} annotation shards (first missing: "
                f"{schema.ANN_DIR}/{name}): expected every raw shard annotated (rerun semore-annotate)"
            )
        if ann_shards[name].get("num_samples") != raw_info.get("num_samples"):
            raise SemoreError(
                f"{where}: {schema.ANN_DIR}/{name} has {ann_shards[name].get('num_samples')} samples but "
                f"{schema.RAW_DIR}/{raw_name} has {raw_info.get('num_samples')}: expected the same keys "
                "(delete the annotation shard and rerun semore-annotate)"
            )
    raw_names = {schema.shard_index(n) for n in raw_shards}
    extra = sorted(n for n in ann_shards if schema.shard_index(n) not in raw_names)
    if extra:
        raise SemoreError(
            f"{where} lists {schema.ANN_DIR}/{extra[0]}, which has no raw shard: expected the same shards"
        )
    for path in dataset.completed_shards(data_dir, "ann"):
        _check_tar_end(path)
    _warn_unlisted(data_dir, schema.ANN_DIR, schema.ANN_PREFIX, ann)


def repo_files(manifest: dict) -> list[str]:
    """Repo-relative paths a dataset publishes: manifest, card and the listed shards."""
    files = [schema.MANIFEST_NAME, schema.CARD_NAME]
    files += [f"{schema.RAW_DIR}/{name}" for name in sorted(manifest["raw"].get("shards", {}))]
    files += [
        f"{schema.ANN_DIR}/{name}" for name in sorted(manifest.get("ann", {}).get("shards", {}))
    ]
    return files


def export_local(data_dir: str | Path, files: list[str], out_dir: str | Path) -> Path:
    """Copy ``files`` to ``out_dir`` with the repo layout; files already identical are skipped."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        raise SemoreError(
            f"--local-dir {out_dir} is inside --data {data_dir}: expected a separate folder"
        )
    with FolderLock(out_dir, "push"):
        _copy_files(data_dir, files, out_dir)
    return out_dir


def _copy_files(data_dir: Path, files: list[str], out_dir: Path) -> None:
    """The copies of ``export_local``, made while it holds ``out_dir``'s lock."""
    wanted = set(files)
    for folder in (schema.RAW_DIR, schema.ANN_DIR):
        for stray in sorted((out_dir / folder).glob(f"*{schema.SHARD_SUFFIX}")):
            rel = stray.relative_to(out_dir).as_posix()
            if rel not in wanted:
                raise SemoreError(
                    f"--local-dir {out_dir} holds {rel}, which this dataset does not publish: "
                    "expected an empty folder or an earlier export of this dataset"
                )
    for rel in files:
        src, dst = data_dir / rel, out_dir / rel
        if dst.is_file() and _same_file(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as source:
            atomic_save(dst, lambda handle, source=source: shutil.copyfileobj(source, handle))
        shutil.copystat(src, dst)  # same mtime: a rerun skips the file (see _same_file)


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and sa.st_mtime_ns == sb.st_mtime_ns


def resolve_token(token: str | None) -> str:
    """``--token``, else ``HF_TOKEN``, else the cached ``hf auth login`` token."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise SemoreError(NO_TOKEN)
    return token


def upload(
    data_dir: str | Path,
    files: list[str],
    repo_id: str,
    token: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "semore-push",
) -> str:
    """Create the dataset repo (and branch) if needed and upload ``files``; returns a URL."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    # the HTTP client's base error (httpx2's in huggingface_hub 2.x), which the hub re-exports
    transport_errors = getattr(hub_errors, "HTTPError", ConnectionError)
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(data_dir),
            revision=revision,
            allow_patterns=files,
            ignore_patterns=list(EXCLUDE_PATTERNS),
            commit_message=commit_message,
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise SemoreError(
                f"the Hugging Face Hub rejected the token for {repo_id} (HTTP {status}): expected a token "
                "with write access to it (--token, HF_TOKEN or `hf auth login`)"
            ) from None
        raise SemoreError(
            f"upload to {repo_id} failed ({first_line(err)}): rerun to resume"
        ) from None
    except OfflineModeIsEnabled:
        raise SemoreError(
            "HF_HUB_OFFLINE is set: unset it to push to the Hub, or use --local-dir"
        ) from None
    except transport_errors as err:  # DNS failure, refused connection, time-out
        raise SemoreError(
            f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}): "
            "expected network access (rerun to resume, or use --local-dir)"
        ) from None
    return str(getattr(commit, "commit_url", None) or repo_url)


def checkout_cards_dir() -> Path | None:
    """``datasets_cards/`` of the source checkout this package runs from, if any."""
    root = Path(__file__).resolve().parents[1]
    cards_dir = root / "datasets_cards"
    return cards_dir if (root / ".git").exists() and (cards_dir / "TEMPLATE.md").is_file() else None


def release_target(
    card_path: str | Path, dataset_id: str, cards_dir: str | Path | None = None
) -> Path:
    """Where ``--release`` puts this card: ``cards_dir/NAME-vN.md`` (default: the checkout's
    ``datasets_cards/``); refuses to replace a different card already released there."""
    ds_id = cards.parse_dataset_id(dataset_id)
    cards_dir = Path(cards_dir) if cards_dir is not None else checkout_cards_dir()
    if cards_dir is None:
        raise SemoreError(
            "--release needs a source checkout (datasets_cards/ next to pipeline/): or pass --cards-dir DIR"
        )
    target = cards_dir / ds_id.card_file_name
    text = Path(card_path).read_text(encoding="utf-8")
    if target.is_file() and target.read_text(encoding="utf-8") != text:
        raise SemoreError(
            f"{target} already holds a different card for {ds_id}: a released version is immutable; "
            f"publish {ds_id.org}/{ds_id.name}-v{ds_id.version + 1} (or remove the file deliberately)"
        )
    return target


def push(
    data_dir: str | Path,
    repo_id: str,
    *,
    local_dir: str | Path | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    license: str = cards.DEFAULT_LICENSE,
    release: bool = False,
    cards_dir: str | Path | None = None,
) -> str:
    """Validate, write the card, then export to ``local_dir`` or upload; returns where it went."""
    data_dir = Path(data_dir)
    cards.parse_dataset_id(repo_id)
    manifest = check_dataset(data_dir)
    if local_dir is None:
        token = resolve_token(token)
    card = cards.write_card(data_dir, repo_id, revision=revision or "main", license=license)
    files = repo_files(manifest)
    # checked before publishing, written after: a refused release publishes nothing
    target = release_target(card, repo_id, cards_dir) if release else None
    if local_dir is not None:
        where = str(export_local(data_dir, files, local_dir))
    else:
        totals = manifest["raw"].get("totals", {})
        message = f"semore-push {repo_id}: {totals.get('num_samples', 0)} samples in {totals.get('num_shards', 0)} shards"
        where = upload(
            data_dir,
            files,
            repo_id,
            token,
            private=private,
            revision=revision,
            commit_message=message,
        )
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(card, target)
        log.info("released card %s", target)
    return where
