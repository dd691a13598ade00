"""Collection throughput, measured side by side in one run.

1. steps/s of the bare environment + policy loop vs the same episodes recorded to shards
   (target ratio >= 0.9: recording must not slow collection down);
2. wall-clock speed-up of ``--workers 2`` over ``--workers 1`` (target >= 1.7 on 2 cores).

    python benchmarks/collect.py [--episodes 4] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from pipeline.collect.recorder import block_episodes, record_block  # noqa: E402
from pipeline.collect.run import CollectConfig, collect  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.sim import make_env  # noqa: E402
from pipeline.sim.policies import CollectionPolicy  # noqa: E402
from pipeline.sim.seeding import collect_episode_seed, collect_policy_rng  # noqa: E402

CONFIG = (
    Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "collect" / "quickstart.yaml"
)


def bare_loop(cfg: CollectConfig, episodes: list[int]) -> int:
    """The environment + policy loop alone; returns the number of steps."""
    env = make_env(cfg.env)
    policy = CollectionPolicy(cfg.policy, env.action_dim)
    steps = 0
    for episode in episodes:
        env.reset(collect_episode_seed(cfg.seed, episode))
        policy.start_episode(collect_policy_rng(cfg.seed, episode))
        while True:
            action, _ = policy.act(env)
            result = env.step(action)
            steps += 1
            if result.terminated or result.truncated:
                break
    env.close()
    return steps


def recorded_loop(cfg: CollectConfig, episodes: list[int], out: Path) -> int:
    """The same episodes written to a shard through the collector's code."""
    env = make_env(cfg.env)
    policy = CollectionPolicy(cfg.policy, env.action_dim)
    info = record_block(env, policy, out, 0, episodes, cfg.run, 0, cfg.seed)
    env.close()
    return info["num_samples"]


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="max steps per episode")
    args = parser.parse_args()
    cfg = load_config(CollectConfig, CONFIG)
    cfg = replace(cfg, highway=replace(cfg.highway, max_episode_steps=args.steps))
    episodes = block_episodes(0, args.episodes, args.episodes)

    with tempfile.TemporaryDirectory() as tmp:
        # Interleave the two loops twice and keep each one's best time, so that a noisy
        # neighbour process penalises neither side more than the other.
        bare_s, rec_s = [], []
        for trial in range(2):
            t, bare_steps = timed(bare_loop, cfg, episodes)
            bare_s.append(t)
            t, rec_steps = timed(recorded_loop, cfg, episodes, Path(tmp) / f"rec{trial}")
            rec_s.append(t)
        assert bare_steps == rec_steps, (bare_steps, rec_steps)
        bare_rate, rec_rate = bare_steps / min(bare_s), rec_steps / min(rec_s)
        print(f"bare env+policy loop : {bare_rate:8.1f} steps/s ({bare_steps} steps)")
        print(f"recording to shards  : {rec_rate:8.1f} steps/s")
        print(f"recording / bare     : {rec_rate / bare_rate:8.3f}   (target >= 0.9)")

        # Expert-only episodes all run to max_episode_steps, so the two workers get equal work
        # and the ratio measures the parallel machinery, not the luck of episode lengths.
        parallel = replace(
            cfg,
            episodes=4 * args.episodes,
            episodes_per_shard=max(1, args.episodes // 2),
            policy=replace(cfg.policy, name="expert"),
        )
        t1, _ = timed(collect, replace(parallel, workers=1), Path(tmp) / "w1")
        t2, _ = timed(collect, replace(parallel, workers=2), Path(tmp) / "w2")
        print(f"--workers 1          : {t1:8.1f} s for {parallel.episodes} episodes")
        print(f"--workers 2          : {t2:8.1f} s")
        print(f"speed-up 2 vs 1      : {t1 / t2:8.2f}   (target >= 1.7 on 2 cores)")


if __name__ == "__main__":
    main()
