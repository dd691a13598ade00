"""Annotation vs collection throughput on the quickstart presets, in one process.

    SDL_VIDEODRIVER=offscreen HF_HUB_OFFLINE=1 python benchmarks/annotate.py \
        [--episodes 4] [--num-threads N] [--keep DIR]

1. collect: ``semore-collect`` with configs/collect/quickstart.yaml (highway, ``--episodes``
   episodes) into a temporary folder, timed end to end;
2. annotate: ``semore-annotate`` with configs/annotate/quickstart.yaml (scene captioner +
   the shipped MiniLM) on the same data, timed end to end (imports and model loading
   included), then once more shard by shard with the models already loaded ("warm");
3. the text encoder's work: captions sent to it vs distinct captions per shard (the cache
   is per shard, so these should be equal) and over the whole dataset.

Wall-clock and CPU time are both reported: on a shared machine the wall-clock rates
depend on the other load, CPU seconds much less. Targets: annotation >= 5x the collection
rate; encoder calls == distinct captions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.annotate.annotator import Annotator  # noqa: E402
from pipeline.annotate.config import AnnotateConfig  # noqa: E402
from pipeline.annotate.run import main as annotate_main  # noqa: E402
from pipeline.collect.run import main as collect_main  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import dataset, schema  # noqa: E402
from pipeline.data.shards import iter_shard  # noqa: E402

COLLECT_CONFIG = REPO / "pipeline" / "presets" / "collect" / "quickstart.yaml"
ANNOTATE_CONFIG = REPO / "pipeline" / "presets" / "annotate" / "quickstart.yaml"


def _timed(fn, *args) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process: all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _steady_state(data: Path, overrides: list[str]) -> tuple[int, float, float]:
    """Samples, wall and CPU seconds to annotate every shard again with models loaded."""
    cfg = load_config(AnnotateConfig, ANNOTATE_CONFIG, overrides)
    annotator = Annotator.from_config(cfg)
    scratch = data / "bench-ann"
    samples, wall, cpu = 0, 0.0, 0.0
    for raw_path in dataset.completed_shards(data, "raw"):
        outcome, wall_s, cpu_s = _timed(annotator.run_shard, raw_path, scratch / raw_path.name)
        samples += outcome.info["num_samples"]
        wall, cpu = wall + wall_s, cpu + cpu_s
    shutil.rmtree(scratch)
    return samples, wall, cpu


def _distinct_captions(data: Path) -> tuple[int, int]:
    """Distinct captions summed shard by shard (what a per-shard cache must encode), and
    distinct over the whole dataset."""
    per_shard_unique, everything = 0, set()
    for path in sorted((data / schema.ANN_DIR).glob("ann-*.tar")):
        captions = set()
        for sample in iter_shard(path):
            captions |= {sample[schema.CAPTION_SEM], sample[schema.CAPTION_MOT]}
        per_shard_unique += len(captions)
        everything |= captions
    return per_shard_unique, len(everything)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="highway episodes to collect")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch threads for annotation (default: preset)",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the dataset here and keep it"
    )
    args = parser.parse_args()
    overrides = ["--num_threads", str(args.num_threads)] if args.num_threads is not None else []

    tmp = None if args.keep else tempfile.mkdtemp(prefix="semore-bench-annotate-")
    data = args.keep or Path(tmp) / "data"
    try:
        rc, collect_s, collect_cpu = _timed(collect_main, ["--config", str(COLLECT_CONFIG), "--out", str(data),
                                              "--episodes", str(args.episodes), "--quiet"])  # fmt: skip
        assert rc == 0, "collection failed"
        rc, annotate_s, annotate_cpu = _timed(annotate_main, ["--config", str(ANNOTATE_CONFIG), "--data", str(data),
                                                "--quiet", *overrides])  # fmt: skip
        assert rc == 0, "annotation failed"
        manifest = json.loads((data / schema.MANIFEST_NAME).read_text())
        samples = manifest["raw"]["totals"]["num_samples"]
        steady_samples, steady_s, steady_cpu = _steady_state(data, overrides)

        per_shard_unique, distinct = _distinct_captions(data)
        totals = manifest["ann"]["totals"]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    collect_rate = samples / collect_s
    annotate_rate = samples / annotate_s
    steady_rate = steady_samples / steady_s
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}; annotate threads: {args.num_threads or 'preset default'}"
    )
    print(f"samples: {samples} ({args.episodes} highway episodes, {totals['num_shards']} shards)")
    print("                  wall s   samples/s   CPU s   samples/CPU-s")
    for name, n, wall, cpu in (
        ("collect", samples, collect_s, collect_cpu),
        ("annotate (e2e)", samples, annotate_s, annotate_cpu),
        ("annotate (warm)", steady_samples, steady_s, steady_cpu),
    ):
        print(f"{name:16s} {wall:7.2f} {n / wall:11.1f} {cpu:7.2f} {n / cpu:15.1f}")
    print(
        f"ratio annotate/collect (target >= 5x): {annotate_rate / collect_rate:.1f}x end to end, "
        f"{steady_rate / collect_rate:.1f}x warm; per CPU-second {collect_cpu / annotate_cpu:.1f}x end to end, "
        f"{(steady_samples / steady_cpu) / (samples / collect_cpu):.1f}x warm"
    )
    print(
        f"text encoder: {totals['encoder_calls']} captions encoded for {totals['caption_lookups']} lookups "
        f"(cache hit rate {100 * totals['cache_hits'] / totals['caption_lookups']:.1f}%); distinct captions: "
        f"{per_shard_unique} summed per shard (target: equal to encoded), {distinct} over the dataset"
    )


if __name__ == "__main__":
    main()
