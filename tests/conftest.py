"""Shared fixtures: tiny synthetic raw datasets written through the real shard/manifest code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from pipeline.data import (
    dataset,  # noqa: E402
    schema,  # noqa: E402
)
from pipeline.data import manifest as mf  # noqa: E402
from pipeline.data.shards import AtomicShardWriter  # noqa: E402


def dead_pid() -> int:
    """The pid of a process that has exited: what a killed writer leaves in its file names."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def synthetic_state(episode: int, step: int, dt_s: float) -> dict:
    """A highway-like privileged state whose values vary with (episode, step)."""
    rng = np.random.default_rng(episode * 1000 + step)
    speed = 20.0 + 5.0 * np.sin(0.3 * step + episode)
    has_lead = (step + episode) % 3 != 0
    lead = (10.0 + 3 * step, rng.normal()) if has_lead else None
    return schema.EgoState(
        speed_mps=speed,
        lon_speed_mps=speed,
        lat_speed_mps=0.5 * np.cos(step),
        acceleration_mps2=1.5 * np.cos(0.3 * step + episode),
        heading_rad=0.01 * step,
        yaw_rate_radps=0.01 * np.sin(step),
        lateral_offset_m=0.4 * np.sin(0.7 * step + episode),
        road_edge_left_m=(episode % 3 + 0.5) * 4.0 + 0.4 * np.sin(0.7 * step + episode),
        road_edge_right_m=(2.5 - episode % 3) * 4.0 - 0.4 * np.sin(0.7 * step + episode),
        position_m=[speed * step * dt_s, 4.0 * (episode % 3)],
        lane_index=episode % 3,
        lanes_count=3,
        **schema.EgoState.lead_fields(lead),
        neighbours_per_lane=[int(rng.integers(0, 3)) for _ in range(3)],
        collision=step == 5 and episode == 1,
        collision_impulse=0.0,
        on_road=True,
        steer=0.0,
        time_s=step * dt_s,
    ).to_json()


def write_synthetic_raw(
    root: Path,
    num_episodes: int = 4,
    steps_per_episode: int = 6,
    episodes_per_shard: int = 2,
    image_hw: tuple[int, int] = (32, 32),
    run: str = "syn",
    dt_s: float = 0.2,
) -> Path:
    """Write a raw dataset (shards + manifest) with frames that encode (episode, step)."""
    root = Path(root)
    manifest = mf.new_manifest()
    manifest["raw"] = {
        "backend": "synthetic",
        "run": run,
        "seed": 0,
        "camera_names": ["rgb"],
        "image_height": image_hw[0],
        "image_width": image_hw[1],
        "action_names": ["acceleration", "steering"],
        "episodes_per_shard": episodes_per_shard,
        "step_duration_s": dt_s,
        "config": {},
        "config_hash": "synthetic",
        "shards": {},
    }
    root.mkdir(parents=True, exist_ok=True)
    mf.write_manifest(root, manifest)
    num_shards = (num_episodes + episodes_per_shard - 1) // episodes_per_shard
    for shard_idx in range(num_shards):
        name = schema.shard_name(schema.RAW_PREFIX, shard_idx)
        episodes = range(
            shard_idx * episodes_per_shard, min(num_episodes, (shard_idx + 1) * episodes_per_shard)
        )
        with AtomicShardWriter(root / schema.RAW_DIR / name) as writer:
            for ep in episodes:
                for step in range(steps_per_episode):
                    frame = np.full((*image_hw, 3), (ep * 37 + step * 11) % 256, dtype=np.uint8)
                    frame[: image_hw[0] // 2, :, 1] = step * 20 % 256
                    is_last = step == steps_per_episode - 1
                    state = synthetic_state(ep, step, dt_s)
                    info = dataset.step_info(ep, step, is_last, False, is_last, 1000 + ep, "expert")
                    info.update(distance_m=state["speed_mps"] * dt_s, collision=state["collision"])
                    members = dataset.raw_members(
                        {"rgb": frame},
                        np.array([np.sin(step), np.cos(ep)], dtype=np.float32),
                        state["speed_mps"] * dt_s,
                        state,
                        info,
                    )
                    writer.write(schema.make_key(run, 0, ep, step), members)
        dataset.record_shard(
            root,
            "raw",
            name,
            {
                "num_samples": len(episodes) * steps_per_episode,
                "num_episodes": len(episodes),
                "episodes": list(episodes),
            },
        )
    return root


@pytest.fixture
def raw_dataset(tmp_path: Path) -> Path:
    """4 episodes x 6 steps of 32x32 frames in 2 raw shards."""
    return write_synthetic_raw(tmp_path / "data")
