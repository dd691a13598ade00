"""Stage 2, ``semore-annotate``: caption and embed every raw shard into an aligned ann shard.

``DIR/raw/raw-NNNNNN.tar`` -> ``DIR/ann/ann-NNNNNN.tar`` (same index, same keys in the same
order) plus an ``ann`` section in ``DIR/manifest.json``. Shards are the unit of work and
of resumption: complete, listed ann shards are kept; others are (re)written atomically and
recorded one by one. ``--worker-index I --num-workers W`` takes the shards with
``index % W == I``, so nodes of a job array (or torchrun ranks) split a dataset with no
coordination beyond a file lock on the manifest.

``--skip-bad``: a raw sample that misses a member or has an unreadable state is left out
of its ann shard (its key is listed under ``skipped_keys`` of that shard, so keys align
1:1 except for those); a raw shard that cannot be read to the end gets no ann shard and
is listed under the section's ``skipped_shards`` (and retried by the next run).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from pipeline import cli
from pipeline.annotate.annotator import Annotator, ShardOutcome, captioner_id, prompt_hashes
from pipeline.annotate.config import CAPTIONERS, TEXT_ENCODERS, AnnotateConfig, content_hash
from pipeline.annotate.text_encoders import TextEncoder, make_text_encoder
from pipeline.config import from_dict, load_config, to_dict
from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data import manifest_schema as ms
from pipeline.data.shards import list_shards, remove_stale_tmp
from pipeline.errors import SemoreError
from pipeline.launch import cli as launch_cli
from pipeline.lock import FolderLock
from semore.checks import MAX_PROCESSES

log = logging.getLogger(__name__)
MODULE = "pipeline.annotate.run"  # what a launched task runs (``python -m``)


def ann_name(raw_name: str) -> str:
    """``raw-000003.tar`` -> ``ann-000003.tar``."""
    return schema.shard_name(schema.ANN_PREFIX, schema.shard_index(raw_name))


def reusable_section(manifest: dict, cfg: AnnotateConfig, root: Path, quiet: bool = False) -> bool:
    """Whether the manifest's ``ann`` section was made by this config from this raw data.

    A section from another config is an error while ann shards exist; once ``ann/`` is
    emptied or deleted it is replaced (returns False, as when there is none).
    """
    section = manifest.get("ann")
    if section is None:
        return False
    raw_hash = manifest["raw"].get("config_hash")
    if section.get("config_hash") != content_hash(cfg):
        problem = f"another annotate config (hash {section.get('config_hash')}, this run {content_hash(cfg)})"
    elif section.get("raw_config_hash") != raw_hash:
        problem = (
            f"other raw data (raw config hash {section.get('raw_config_hash')}, now {raw_hash})"
        )
    else:
        return True
    ann_dir = root / schema.ANN_DIR
    if list_shards(ann_dir, schema.ANN_PREFIX):
        raise SemoreError(
            f"{ann_dir} holds annotations made with {problem}: expected the same config, "
            f"or a fresh --data copy, or delete {ann_dir} to annotate again"
        )
    if not quiet:
        log.warning(
            "replacing the ann section of %s (made with %s): %s holds no shards",
            root,
            problem,
            ann_dir,
        )
    return False


def new_section(cfg: AnnotateConfig, raw: dict, encoder: TextEncoder) -> dict:
    return {
        "command": mf.command_line(),
        "config": to_dict(cfg),
        "config_hash": content_hash(cfg),
        "git_revision": mf.git_revision(),
        "captioner": captioner_id(cfg),
        "text_encoder": encoder.name,
        "prompts": prompt_hashes(cfg),
        "embedding_dim": encoder.dim,
        **schema.motion_manifest_fields(),
        "keyframe_stride": cfg.keyframe_stride,
        "raw_config_hash": raw.get("config_hash"),
        # The caption cache is per shard, so shards do not depend on each other.
        "cache_scope": "shard",
        "shards": {},
        "skipped_shards": {},
    }


def plan(
    root: Path, manifest: dict, cfg: AnnotateConfig, index: int, count: int
) -> list[tuple[Path, Path]]:
    """(raw, ann) shard paths this invocation must write: its slice minus complete shards."""
    done = manifest["ann"].get("shards", {}) if reusable_section(manifest, cfg, root) else {}
    # An ann shard of a raw shard that a longer collect has since rewritten is redone.
    stale = ms.stale_annotations(manifest) if done else {}
    ann_dir = root / schema.ANN_DIR
    todo, kept = [], []
    # Raw shards are checked against the manifest as they are read (--skip-bad skips them).
    for raw_path in dataset.completed_shards(root, "raw", check_files=False):
        if schema.shard_index(raw_path.name) % count != index:
            continue
        ann_path = ann_dir / ann_name(raw_path.name)
        if ann_path.name in stale:
            log.warning("%s is annotated again: %s", ann_path.name, stale[ann_path.name])
        if ann_path.name not in done or ann_path.name in stale or not ann_path.is_file():
            todo.append((raw_path, ann_path))
        else:
            kept.append(ann_path.name)
    dataset.check_annotations(root, manifest, kept)  # what is kept must match its raw keys
    return todo


def pending_slices(cfg: AnnotateConfig, root: Path, num_workers: int) -> list[int]:
    """Slices (``--worker-index`` values) with raw shards that lack an ann shard, for a
    launcher; every slice while the raw data is still short of its episodes (collect tasks
    may be running: an annotate task started after them sees every shard)."""
    manifest = mf.read_manifest(root)
    raw = mf.section(manifest, "raw", root)
    if raw.get("totals", {}).get("num_episodes", 0) < raw.get("config", {}).get("episodes", 0):
        return list(range(num_workers))
    return [i for i in range(num_workers) if plan(root, manifest, cfg, i, num_workers)]


def annotate(
    cfg: AnnotateConfig,
    root: Path,
    worker_index: int = 0,
    num_workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    annotator: Annotator | None = None,
) -> dict:
    """Annotate this invocation's slice of ``root``'s raw shards; returns the final manifest.

    ``annotator`` replaces the one ``cfg`` describes (in one process; e.g. a test's own text
    encoder); the manifest then records its captioner and text-encoder names.
    """
    root = Path(root)
    manifest = mf.read_manifest(root)
    mf.section(manifest, "raw", root)
    todo = plan(root, manifest, cfg, worker_index, num_workers)
    if not todo:
        log.info("nothing to annotate: every raw shard of this slice has a complete ann shard")
        return manifest
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    # Models load before the manifest changes, so a model that fails to load leaves no trace.
    # With a pool, the workers load their own and the parent only needs the encoder's dim.
    workers = 1 if annotator is not None else min(cfg.workers, len(todo))
    if annotator is None and workers == 1:
        annotator = Annotator.from_config(cfg)
    encoder = annotator.encoder if annotator else make_text_encoder(cfg)
    manifest = _open_section(root, cfg, encoder, todo)
    _remove_stale(root, todo, num_workers)

    raw_shards = manifest["raw"]["shards"]
    # The manifest's sample counts let a shard that a tar reader cuts short be caught.
    tasks = [(raw, ann, raw_shards.get(raw.name, {}).get("num_samples")) for raw, ann in todo]
    total = sum(n or 0 for *_, n in tasks)
    bar = tqdm(
        total=total, unit="sample", desc="annotate", dynamic_ncols=True, disable=not progress
    )
    try:
        if annotator is not None:
            for raw_path, ann_path, expected in tasks:
                _record(
                    root, annotator.run_shard(raw_path, ann_path, skip_bad, expected, bar.update)
                )
        else:
            del encoder  # each worker process loads its own
            _run_pool(cfg, tasks, workers, skip_bad, root, bar)
    finally:
        bar.close()
    return mf.read_manifest(root)


def _open_section(
    root: Path, cfg: AnnotateConfig, encoder: TextEncoder, todo: list[tuple[Path, Path]]
) -> dict:
    """The manifest with this run's ann section (the one on disk when ``cfg`` may extend it,
    else a new one), the shards of ``todo`` no longer listed as skipped; written."""
    with dataset.manifest_lock(root):
        manifest = mf.read_manifest(root)  # another node may have created the section meanwhile
        if not reusable_section(manifest, cfg, root, quiet=True):
            manifest["ann"] = new_section(cfg, manifest["raw"], encoder)
        section = manifest["ann"]
        if section.get("embedding_dim") != encoder.dim:
            raise SemoreError(
                f"{mf.manifest_path(root)} records embedding_dim {section.get('embedding_dim')}: "
                f"expected {encoder.dim} from {encoder.name} (were the weights replaced?)"
            )
        for raw_path, _ in todo:  # retried now; listed again if still unreadable
            section.setdefault("skipped_shards", {}).pop(raw_path.name, None)
        mf.write_manifest(root, manifest)
    return manifest


def _remove_stale(root: Path, todo: list[tuple[Path, Path]], num_workers: int) -> None:
    """Delete temporary shards of killed runs (under this slice's lock, see ``_run``); with
    several nodes, only this slice's."""
    names = None if num_workers == 1 else [ann.name for _, ann in todo]
    for path in remove_stale_tmp(root / schema.ANN_DIR, names):
        log.info("removed incomplete shard %s left by an interrupted run", path.name)


def _record(root: Path, outcome: ShardOutcome) -> None:
    """Manifest update after each shard (parent process only)."""
    if outcome.skipped_reason is None:
        dataset.record_shard(root, "ann", outcome.ann_name, outcome.info)
        return
    with dataset.manifest_lock(root):
        manifest = mf.read_manifest(root)
        mf.section(manifest, "ann", root).setdefault("skipped_shards", {})[outcome.raw_name] = (
            outcome.skipped_reason
        )
        mf.write_manifest(root, manifest)


_WORKER: Annotator | None = None


def _work(
    cfg_dict: dict, threads: int, log_level: int, task: tuple, skip_bad: bool
) -> ShardOutcome:
    """Pool task: models are loaded on a worker's first task (errors then reach the parent)."""
    global _WORKER
    if _WORKER is None:
        import torch

        logging.basicConfig(
            level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        torch.set_num_threads(threads)  # K workers share the cores instead of oversubscribing
        _WORKER = Annotator.from_config(from_dict(AnnotateConfig, cfg_dict))
    raw_path, ann_path, expected = task
    return _WORKER.run_shard(raw_path, ann_path, skip_bad, expected)


def _run_pool(
    cfg: AnnotateConfig, tasks: list, workers: int, skip_bad: bool, root: Path, bar: tqdm
) -> None:
    ctx = mp.get_context("spawn")  # CUDA and tokenizer threads are not fork-safe
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // workers)
    level = logging.getLogger().getEffectiveLevel()
    error = None
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_work, to_dict(cfg), threads, level, task, skip_bad) for task in tasks
        ]
        try:
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as err:  # re-raised below, once finished shards are recorded
                    if error is None:
                        error = err
                        for other in futures:
                            other.cancel()
                    continue
                _record(root, outcome)
                bar.update(outcome.info.get("num_samples", 0))
        except KeyboardInterrupt:
            for other in futures:
                other.cancel()
            raise
    if error is not None:
        raise error


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-annotate", "Caption and embed raw shards into aligned annotation shards."
    )
    parser.add_argument("--config", default=None, help="YAML file or preset name, e.g. quickstart")
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset folder holding raw/ and manifest.json"
    )
    parser.add_argument(
        "--captioner", choices=CAPTIONERS, help="scene (from the simulator state) or vlm"
    )
    parser.add_argument("--text-encoder", choices=TEXT_ENCODERS, help="caption embedding model")
    parser.add_argument(
        "--workers",
        type=cli.int_in(1, MAX_PROCESSES),
        help="processes over shards on this machine",
    )
    cli.add_slice_args(parser, "raw shards")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad raw samples/shards (listed in the manifest) instead of stopping",
    )
    launch_cli.add_launcher_args(parser)
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(AnnotateConfig, args.config, overrides, stage="annotate")
    flags = {
        "captioner": args.captioner,
        "text_encoder": args.text_encoder,
        "workers": args.workers,
    }
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.launcher == "slurm":  # one task per slice; its tasks run this command locally
        pending = pending_slices(cfg, args.data, cli.node_slice(0, args.num_workers)[1])
        if not launch_cli.launch_slices(args, cfg.launcher, MODULE, args.data, pending):
            return
        manifest = mf.read_manifest(args.data)
    else:
        worker_index, num_workers = cli.node_slice(args.worker_index, args.num_workers)
        with FolderLock(args.data, "annotate", worker_index, num_workers, create=False):
            manifest = annotate(
                cfg, args.data, worker_index, num_workers, args.skip_bad, not args.quiet
            )
    section = manifest.get("ann", {})
    totals = section.get("totals", {})
    lookups = totals.get("caption_lookups", 0)
    print(
        f"{args.data}: {totals.get('num_samples', 0)} annotated samples in {totals.get('num_shards', 0)} shards; "
        f"{totals.get('encoder_calls', 0)} captions encoded for {lookups} lookups "
        f"(cache hit rate {100 * totals.get('cache_hits', 0) / max(1, lookups):.1f}%); "
        f"{totals.get('skipped_samples', 0)} samples and {len(section.get('skipped_shards', {}))} shards skipped"
    )


def main(argv: list[str] | None = None) -> int:
    return launch_cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
