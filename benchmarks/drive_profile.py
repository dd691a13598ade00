"""How trained agents drive, against the expert, on their runs' own evaluation episodes.

    python benchmarks/drive_profile.py RUN [RUN ...] [--out profile.md]

RUN is a ``semore-finetune`` output folder (its ``checkpoints/last.pt``). Each run's policy
drives the run's evaluation episodes (its ``eval_seed`` and ``num_eval_episodes``,
deterministic actions, as the loop evaluates it); the backend's expert drives the same
episodes once. Per driver: return, distance and speed per episode, the speed over steps 10-40
(after the start) and with / without a lead vehicle close ahead, lane changes, hard
acceleration or braking, and collisions. This says where a return below the expert's is lost:
speed, crashes or weaving.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import from_dict
from pipeline.data.checkpoint import last_checkpoint, read_checkpoint
from pipeline.errors import SemoreError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.run import build_agent
from pipeline.sim import make_env
from pipeline.sim.driver import Driver
from pipeline.sim.seeding import eval_seeds
from semore.encoder import EncoderConfig, SemoreEncoder

CLOSE_LEAD_M = 30.0  # a lead this close constrains the speed (the expert keeps 35-45 m)
FREE_ROAD_M = 60.0  # no lead within this: the road ahead is free
HARD_ACCEL_MPS2 = 4.0  # 0.8 of the +-5 m/s^2 action range: bang-bang throttle or brake
EARLY_STEPS = slice(10, 40)  # after the start, where slow agents lose most distance

COLUMNS = (
    "driver",
    "return",
    "distance (m)",
    "speed (m/s)",
    "speed steps 10-40",
    "speed, lead < 30 m",
    "speed, free road",
    "lane changes",
    "|accel| > 4",
    "|steer|",
    "collisions",
    "steps",
)


def load_run(run: Path) -> tuple[FinetuneConfig, torch.nn.Module]:
    """The run's config and its agent as the last checkpoint left it (guide terms dropped:
    acting needs the encoder and actor only)."""
    path = last_checkpoint(run)
    checkpoint = read_checkpoint(path)
    cfg = from_dict(FinetuneConfig, checkpoint["config"], where=str(path))
    encoder = SemoreEncoder.from_config(EncoderConfig(**checkpoint["encoder_config"]))
    agent = build_agent(encoder, cfg, pretrained=checkpoint["encoder_source"] != "none")
    state = {k: v for k, v in checkpoint["agent"]["agent"].items() if not k.startswith("guide.")}
    agent.load_state_dict(state)
    return cfg, agent.eval()


def drive(
    driver: Driver, policy: Callable[[np.ndarray], np.ndarray | None], seeds: list[int]
) -> list[list[dict]]:
    """One episode per seed; per step the privileged state plus the step's distance."""
    episodes = []
    for seed in seeds:
        current, steps = driver.reset(seed), []
        while not (current.terminated or current.truncated):
            current = driver.step(policy(current.obs))
            steps.append(
                {
                    **current.state,
                    "step_distance_m": current.distance_m,
                    "collisions": current.collisions,
                    "reward": current.reward,
                }
            )
        episodes.append(steps)
    return episodes


def profile(name: str, episodes: list[list[dict]]) -> dict:
    """The table row of one driver's episodes (means per episode or per step)."""
    steps = [s for ep in episodes for s in ep]
    speed = np.array([s["speed_mps"] for s in steps])
    lead = np.array([s["lead_distance_m"] if s["lead_present"] else np.inf for s in steps])
    early = np.concatenate([[s["speed_mps"] for s in ep[EARLY_STEPS]] for ep in episodes])
    changes = [
        sum(a["lane_index"] != b["lane_index"] for a, b in zip(ep, ep[1:], strict=False))
        for ep in episodes
    ]
    accel = np.array([s["acceleration_mps2"] for s in steps])
    n = len(episodes)
    return {
        "driver": name,
        "return": sum(s["reward"] for s in steps) / n,
        "distance (m)": sum(s["step_distance_m"] for s in steps) / n,
        "speed (m/s)": speed.mean(),
        "speed steps 10-40": early.mean() if early.size else float("nan"),
        "speed, lead < 30 m": speed[lead < CLOSE_LEAD_M].mean()
        if (lead < CLOSE_LEAD_M).any()
        else float("nan"),
        "speed, free road": speed[lead > FREE_ROAD_M].mean()
        if (lead > FREE_ROAD_M).any()
        else float("nan"),
        "lane changes": float(np.mean(changes)),
        "|accel| > 4": float((np.abs(accel) > HARD_ACCEL_MPS2).mean()),
        "|steer|": float(np.mean([abs(s["steer"]) for s in steps])),
        "collisions": sum(s["collisions"] for s in steps) / n,
        "steps": len(steps) / n,
    }


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * (len(COLUMNS) - 1) + "\n"
    body = "".join(
        "| "
        + " | ".join(
            r[c] if isinstance(r[c], str) else f"{r[c]:.2f}" if r[c] < 10 else f"{r[c]:.1f}"
            for c in COLUMNS
        )
        + " |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="semore-finetune run folders")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, experts = [], {}  # experts: one row per distinct set of evaluation episodes
    for run in args.runs:
        try:
            cfg, agent = load_run(run)
        except SemoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        seeds = eval_seeds(cfg.eval_seed, cfg.num_eval_episodes)
        env = make_env(cfg.env)
        try:
            driver = Driver(env, cfg.repeat, cfg.frame_stack)
            with torch.no_grad():
                episodes = drive(
                    driver, lambda obs, agent=agent: agent.act(obs, sample=False), seeds
                )
            rows.append(profile(str(run), episodes))
            key = (cfg.env.backend, tuple(seeds))
            if key not in experts:
                name = "expert" if not experts else f"expert (eval seed {cfg.eval_seed})"
                experts[key] = profile(name, drive(driver, lambda obs: None, seeds))
        finally:
            env.close()
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)  # progress: its row
    rows += experts.values()
    table = markdown(rows)
    print("\n" + table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
