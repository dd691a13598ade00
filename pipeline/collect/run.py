"""Stage 1, ``semore-collect``: record driving episodes from a simulator into raw shards."""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import signal
from dataclasses import replace
from pathlib import Path

import tqdm as tqdm_module
from tqdm import tqdm

from pipeline import cli
from pipeline.collect.config import CollectConfig, content_hash
from pipeline.collect.recorder import block_episodes, record_block, shard_info_from_disk
from pipeline.config import from_dict, load_config, to_dict
from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data.shards import list_shards, remove_stale_tmp
from pipeline.errors import SemoreError
from pipeline.launch import cli as launch_cli
from pipeline.lock import FolderLock
from pipeline.sim import backend_spec, make_env
from pipeline.sim.configs import BACKENDS
from pipeline.sim.policies import CollectionPolicy
from semore.checks import MAX_PROCESSES, MAX_SEED

log = logging.getLogger(__name__)
MODULE = "pipeline.collect.run"  # what a launched task runs (``python -m``)
tqdm_module.tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked


def slice_blocks(cfg: CollectConfig, worker_index: int, num_workers: int) -> range:
    """The episode blocks (shard indices) of this node's slice."""
    num_blocks = -(-cfg.episodes // cfg.episodes_per_shard)
    return range(worker_index, num_blocks, num_workers)


def plan_blocks(
    cfg: CollectConfig, recorded: dict[str, dict], worker_index: int, num_workers: int
) -> list[int]:
    """Blocks this invocation must (re)write: those whose shard lacks requested episodes."""
    todo = []
    for block in slice_blocks(cfg, worker_index, num_workers):
        wanted = set(block_episodes(block, cfg.episodes_per_shard, cfg.episodes))
        have = set(
            recorded.get(schema.shard_name(schema.RAW_PREFIX, block), {}).get("episodes", [])
        )
        if not wanted <= have:
            todo.append(block)
    return todo


def pending_slices(cfg: CollectConfig, out: Path, num_workers: int) -> list[int]:
    """Slices (``--worker-index`` values) with episodes ``out`` lacks, for a launcher.

    A new ``out`` gets its manifest here, so a folder that cannot hold the dataset fails
    before anything is submitted; shards on disk are reconciled by the tasks themselves.
    """
    manifest = mf.read_manifest(out, required=False)
    if manifest is None or manifest.get("raw", {}).get("config_hash") != content_hash(cfg):
        manifest = prepare_output(cfg, out)  # or its one-line error for another config
    recorded = manifest["raw"]["shards"]
    return [i for i in range(num_workers) if plan_blocks(cfg, recorded, i, num_workers)]


def prepare_output(cfg: CollectConfig, out: Path) -> dict:
    """Create or validate ``out``; reconcile shards on disk with the manifest; return it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SemoreError(
            f"cannot write to --out {out} ({err.strerror}): expected a writable folder"
        ) from None
    with dataset.manifest_lock(out):
        manifest = mf.read_manifest(out, required=False)
        if manifest is None:
            if any(p for p in out.iterdir() if not p.name.startswith(".")):
                raise SemoreError(
                    f"--out {out} is not empty and holds no {schema.MANIFEST_NAME}: expected an empty folder or a Semore dataset"
                )
            manifest = mf.new_manifest()
        raw = manifest.get("raw")
        if raw is not None and raw.get("config_hash") != content_hash(cfg):
            raise SemoreError(
                f"{mf.manifest_path(out)} was recorded with another config (hash {raw.get('config_hash')}, "
                f"this one {content_hash(cfg)}): expected the same config and seed, or a new --out"
            )
        if raw is None:
            spec = backend_spec(cfg.env)
            manifest["raw"] = raw = {
                "command": mf.command_line(),
                "config": to_dict(cfg),
                "config_hash": content_hash(cfg),
                "git_revision": mf.git_revision(),
                "backend": cfg.backend,
                "scenario": spec.scenario,
                "run": cfg.run,
                "seed": cfg.seed,
                "episodes_per_shard": cfg.episodes_per_shard,
                "action_names": list(spec.action_names),
                "shards": {},
            }
        raw_dir = out / schema.RAW_DIR
        shards = raw.setdefault("shards", {})
        for name in [n for n in shards if not (raw_dir / n).is_file()]:
            log.warning("shard %s is listed but missing; it will be recorded again", name)
            del shards[name]
        # A run killed between renaming a rewritten shard and recording it leaves an entry
        # of the shard's former content: the shard on disk is complete, and is the truth.
        for name in [n for n in shards if dataset.raw_shard_problem(raw_dir / n, shards[n])]:
            log.warning("shard %s differs from its manifest entry; the entry is rebuilt", name)
            shards[name] = shard_info_from_disk(raw_dir / name)
        for path in list_shards(raw_dir, schema.RAW_PREFIX):
            if path.name not in shards:
                log.info("adopting complete shard %s written before an interruption", path.name)
                shards[path.name] = shard_info_from_disk(path)
        raw["totals"] = mf.totals(shards)
        mf.write_manifest(out, manifest)
    return manifest


def remove_stale_shards(cfg: CollectConfig, out: Path, worker_index: int, num_workers: int) -> None:
    """Delete temporary shards of killed runs: this slice's only, whose writers are gone.

    Called under this slice's lock (see ``_run``), never by a launcher: another node's
    writer may hold a temporary of its own slice in the same folder.
    """
    mine = None  # one node: every leftover temporary is stale
    if num_workers > 1:
        blocks = slice_blocks(cfg, worker_index, num_workers)
        mine = [schema.shard_name(schema.RAW_PREFIX, b) for b in blocks]
    for stale in remove_stale_tmp(out / schema.RAW_DIR, mine):
        log.info("removed incomplete shard %s left by an interrupted run", stale.name)


def _work(
    cfg: CollectConfig, out: Path, blocks: list[int], worker: int, env_index: int, report
) -> None:
    """Record ``blocks`` with one simulator; ``report(kind, payload)`` tells the parent.

    ``worker`` (the node's slice index) goes into sample keys; ``env_index`` picks this
    process's simulator (CARLA: ``carla.hosts[env_index % len(hosts)]``).
    """
    env = make_env(cfg.env, worker=env_index)
    try:
        policy = CollectionPolicy(cfg.policy, env.action_dim)
        for block in blocks:
            episodes = block_episodes(block, cfg.episodes_per_shard, cfg.episodes)
            info = record_block(
                env,
                policy,
                out,
                block,
                episodes,
                cfg.run,
                worker,
                cfg.seed,
                backend_spec(cfg.env).max_retries,
                on_step=lambda: report("step", 1),
                on_episode=lambda: report("episode", 1),
            )
            fields = {
                "camera_names": list(env.camera_names),
                "image_height": int(env.image_shape[0]),
                "image_width": int(env.image_shape[1]),
                "step_duration_s": float(env.step_duration_s),
            }
            report("shard", (schema.shard_name(schema.RAW_PREFIX, block), info, fields))
    finally:
        env.close()


def _subprocess_main(
    cfg_dict: dict, out: str, blocks: list[int], worker: int, env_index: int, queue
) -> None:
    signal.signal(signal.SIGTERM, cli.raise_interrupt)  # the parent terminates workers on errors
    try:
        cfg = from_dict(CollectConfig, cfg_dict)
        _work(cfg, Path(out), blocks, worker, env_index, lambda k, p: queue.put((k, p)))
        queue.put(("done", worker))
    except KeyboardInterrupt:
        queue.put(("interrupted", worker))
    except Exception as err:  # forwarded to the parent, which reports it on one line
        queue.put(("error", f"worker {worker}: {err}"))


def collect(cfg: CollectConfig, out: Path, worker_index: int = 0, num_workers: int = 1) -> dict:
    """Record the episodes of ``cfg`` that ``out`` lacks; returns the final manifest."""
    manifest = prepare_output(cfg, out)
    remove_stale_shards(cfg, out, worker_index, num_workers)
    blocks = plan_blocks(cfg, manifest["raw"]["shards"], worker_index, num_workers)
    total = sum(len(block_episodes(b, cfg.episodes_per_shard, cfg.episodes)) for b in blocks)
    if not blocks:
        log.info("nothing to record: %s already holds the requested episodes", out)
        return manifest
    bar = tqdm(total=total, unit="episode", desc="collect", dynamic_ncols=True)
    steps = 0

    def report(kind: str, payload) -> None:
        nonlocal steps, manifest
        if kind == "step":
            steps += payload
            if steps % 20 == 0:
                elapsed = bar.format_dict["elapsed"] or 1e-9
                bar.set_postfix(steps=steps, steps_per_s=f"{steps / elapsed:.1f}", refresh=False)
        elif kind == "episode":
            bar.update(payload)
        elif kind == "shard":
            name, info, fields = payload
            manifest = dataset.record_shard(out, "raw", name, info, fields)

    workers = min(cfg.workers, len(blocks))
    try:
        if workers == 1:
            _work(cfg, out, blocks, worker_index, worker_index * cfg.workers, report)
        else:
            _run_pool(cfg, out, blocks, workers, worker_index, report)
    finally:
        bar.close()
    return manifest


def _run_pool(
    cfg: CollectConfig, out: Path, blocks: list[int], workers: int, node: int, report
) -> None:
    # fork: children start in milliseconds instead of re-importing torch/webdataset (~3 s).
    # It is safe because the parent never creates a simulator, pygame window or CARLA client.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_subprocess_main,
            args=(
                to_dict(cfg),
                str(out),
                blocks[rank::workers],
                node,
                node * cfg.workers + rank,
                queue,
            ),
            daemon=True,
        )
        for rank in range(workers)
    ]
    for proc in procs:
        proc.start()
    running, error = workers, None
    try:
        while running:
            kind, payload = queue.get()
            if kind in ("done", "interrupted", "error"):
                running -= 1
                if kind == "error" and error is None:
                    error = payload
                    for proc in procs:
                        proc.terminate()
            else:
                report(kind, payload)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        raise
    finally:
        for proc in procs:
            proc.join(timeout=30)
    if error is not None:
        raise SemoreError(error)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-collect", "Record driving episodes into raw WebDataset shards."
    )
    parser.add_argument("--config", required=True, help="YAML file or preset name, e.g. quickstart")
    parser.add_argument(
        "--out", type=Path, required=True, help="dataset folder (created or resumed)"
    )
    parser.add_argument(
        "--episodes",
        type=cli.int_in(1, schema.MAX_EPISODES),
        help="total episodes wanted in --out",
    )
    parser.add_argument(
        "--workers",
        type=cli.int_in(1, MAX_PROCESSES),
        help="simulator processes on this machine",
    )
    parser.add_argument(
        "--seed", type=cli.int_in(0, MAX_SEED), help="base seed (episode seeds derive from it)"
    )
    parser.add_argument(
        "--policy",
        choices=("expert", "random", "mixed", "perturbed"),
        help="data-collection policy",
    )
    parser.add_argument("--backend", choices=BACKENDS, help="simulator backend")
    cli.add_slice_args(parser, "episode blocks (shards)")
    launch_cli.add_launcher_args(parser)
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(CollectConfig, args.config, overrides, stage="collect")
    flags = {
        "episodes": args.episodes,
        "workers": args.workers,
        "seed": args.seed,
        "backend": args.backend,
    }
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.policy is not None:
        cfg = replace(cfg, policy=replace(cfg.policy, name=args.policy))
    if args.launcher == "slurm":  # one task per slice; its tasks run this command locally
        num_workers = cli.node_slice(0, args.num_workers)[1]
        pending = pending_slices(cfg, args.out, num_workers)
        if not launch_cli.launch_slices(args, cfg.launcher, MODULE, args.out, pending):
            return
        manifest = mf.read_manifest(args.out)
    else:
        worker_index, num_workers = cli.node_slice(args.worker_index, args.num_workers)
        with FolderLock(args.out, "collect", worker_index, num_workers):
            manifest = collect(cfg, args.out, worker_index, num_workers)
    totals = manifest["raw"].get("totals", {})
    print(
        f"{args.out}: {totals.get('num_episodes', 0)} episodes, {totals.get('num_samples', 0)} samples "
        f"in {totals.get('num_shards', 0)} shards"
    )


def main(argv: list[str] | None = None) -> int:
    return launch_cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
