"""Recording episodes from a simulator into raw shards (the inner loop of ``semore-collect``).

Episodes are numbered globally and grouped in fixed blocks of ``episodes_per_shard``:
block ``b`` holds episodes ``[b*E, (b+1)*E)`` and is written to ``raw-{b:06d}.tar``. That
makes the plan a pure function of the config, so reruns resume exactly, extra episodes
extend the dataset, and nodes of a job array take disjoint blocks with no coordination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import dataset, schema
from pipeline.data.shards import AtomicShardWriter, decode_member, encode_members, iter_shard
from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv, SimulatorConnectionError
from pipeline.sim.policies import CollectionPolicy
from pipeline.sim.seeding import collect_episode_seed, collect_policy_rng

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """One recorded episode: encoded samples in step order and summary counts."""

    samples: list[tuple[str, dict[str, bytes]]]
    episode_return: float
    distance_m: float
    collisions: int
    expert_steps: int


def block_episodes(block: int, episodes_per_shard: int, num_episodes: int) -> list[int]:
    """Global episode indices of block ``block`` when ``num_episodes`` are requested."""
    start = block * episodes_per_shard
    return list(range(start, min(start + episodes_per_shard, num_episodes)))


def record_episode(
    env: DrivingEnv,
    policy: CollectionPolicy,
    run: str,
    worker: int,
    episode: int,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> Episode:
    """Run one episode and encode every step as a raw sample.

    Sample ``t`` holds the observation and state at ``t``, the action taken at ``t`` and
    the reward that action earned; the episode flags say how the episode ended after it.
    """
    ep_seed = collect_episode_seed(seed, episode)
    frames, state = env.reset(ep_seed)
    policy.start_episode(collect_policy_rng(seed, episode))
    samples: list[tuple[str, dict[str, bytes]]] = []
    episode_return = distance_m = 0.0
    collisions = expert_steps = 0
    step = 0
    while True:
        action, policy_name = policy.act(env)
        result = env.step(action)
        done = result.terminated or result.truncated
        info = dataset.step_info(
            episode,
            step,
            done,
            result.terminated,
            result.truncated and not result.terminated,
            ep_seed,
            policy_name,
        )
        info["distance_m"] = float(result.distance_m)
        info["collision"] = bool(result.state.get("collision", False))
        members = dataset.raw_members(frames, result.action, result.reward, state, info)
        samples.append((schema.make_key(run, worker, episode, step), encode_members(members)))
        episode_return += result.reward
        distance_m += result.distance_m
        collisions += info["collision"]
        expert_steps += policy_name == "expert"
        if on_step is not None:
            on_step()
        if done:
            break
        frames, state = result.frames, result.state
        step += 1
    return Episode(samples, episode_return, distance_m, collisions, expert_steps)


def record_episode_with_retries(env: DrivingEnv, max_retries: int, *args, **kwargs) -> Episode:
    """:func:`record_episode`, re-running the episode after a simulator failure."""
    for attempt in range(max_retries + 1):
        try:
            if attempt:
                env.reconnect()  # may fail too while the server is down: counted as a retry
            return record_episode(env, *args, **kwargs)
        except SimulatorConnectionError as err:
            if attempt == max_retries:
                raise SemoreError(f"{err} (gave up after {max_retries} retries)") from None
            log.warning("simulator failure (%s); retry %d/%d", err, attempt + 1, max_retries)
    raise AssertionError("unreachable")


def record_block(
    env: DrivingEnv,
    policy: CollectionPolicy,
    out: Path,
    block: int,
    episodes: list[int],
    run: str,
    worker: int,
    seed: int,
    max_retries: int = 0,
    on_step: Callable[[], None] | None = None,
    on_episode: Callable[[], None] | None = None,
) -> dict:
    """Write block ``block`` as one shard holding ``episodes``; returns its manifest entry.

    Episodes already in an existing (shorter) shard of this block are copied, not
    re-simulated, and the shard is replaced atomically only once it is complete.
    """
    path = dataset.stage_dir(out, "raw") / schema.shard_name(schema.RAW_PREFIX, block)
    kept = _existing_samples(path)
    stats = {"return_sum": 0.0, "distance_m": 0.0, "collisions": 0, "expert_steps": 0}
    num_samples = 0
    with AtomicShardWriter(path) as writer:
        for episode in episodes:
            if episode in kept:
                samples = kept[episode]
            else:
                recorded = record_episode_with_retries(
                    env, max_retries, policy, run, worker, episode, seed, on_step
                )
                samples = recorded.samples
                stats["return_sum"] += recorded.episode_return
                stats["distance_m"] += recorded.distance_m
                stats["collisions"] += recorded.collisions
                stats["expert_steps"] += recorded.expert_steps
            for key, members in samples:
                writer.write(key, members)
            num_samples += len(samples)
            if on_episode is not None:
                on_episode()
    return {
        "num_samples": num_samples,
        "num_episodes": len(episodes),
        "episodes": list(episodes),
        **_kept_stats(kept, stats),
    }


def shard_info_from_disk(path: Path) -> dict:
    """Rebuild a shard's manifest entry by reading it (for shards renamed before a crash)."""
    samples = list(iter_shard(path, decode=False))
    episodes = sorted({schema.parse_key(s["__key__"]).episode for s in samples})
    return {
        "num_samples": len(samples),
        "num_episodes": len(episodes),
        "episodes": episodes,
        **_stats_of(samples),
    }


def _existing_samples(path: Path) -> dict[int, list[tuple[str, dict[str, bytes]]]]:
    kept: dict[int, list[tuple[str, dict[str, bytes]]]] = {}
    if not path.is_file():
        return kept
    for sample in iter_shard(path, decode=False):
        key = sample.pop("__key__")
        kept.setdefault(schema.parse_key(key).episode, []).append((key, sample))
    return kept


def _kept_stats(kept: dict, stats: dict) -> dict:
    """Add the summary counts of copied episodes to those of the newly recorded ones."""
    extra = _stats_of([members for samples in kept.values() for _, members in samples])
    return {name: stats[name] + extra[name] for name in stats}


def _stats_of(samples: list[dict[str, bytes]]) -> dict:
    """Summary counts of encoded samples (reads only their reward and step members)."""
    steps = [decode_member(schema.STEP, s[schema.STEP]) for s in samples]
    rewards = [float(decode_member(schema.REWARD, s[schema.REWARD])) for s in samples]
    return {
        "return_sum": float(sum(rewards)),
        "distance_m": float(sum(st.get("distance_m", 0.0) for st in steps)),
        "collisions": int(sum(bool(st.get("collision")) for st in steps)),
        "expert_steps": int(sum(st["policy"] == "expert" for st in steps)),
    }
