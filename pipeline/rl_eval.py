"""Evaluation episodes, the metrics CSV and the learning-curve plot of ``semore-finetune``."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pipeline.rl_env import Driver, EpisodeLost

# Leading columns of metrics.csv; training metrics (whatever agent.update returns) follow.
BASE_COLUMNS = (
    "phase",  # "train": one row per training episode; "eval": one row per evaluation
    "step",  # agent steps done when the row was written
    "episode",  # training episodes started so far
    "episode_return",
    "distance_m",  # true distance, summed over every simulator step
    "collisions",
    "mean_abs_steer",
    "episode_steps",  # agent steps per episode
    "steps_per_s",  # training throughput since the previous train row (eval time excluded)
    "wall_time_s",
)
EVAL_KEYS = ("episode_return", "distance_m", "collisions", "mean_abs_steer", "episode_steps")


class MetricsLog:
    """Append-only CSV of train and eval rows; new metric names widen the header."""

    def __init__(self, path: Path, keep_up_to_step: int) -> None:
        """Open ``path``, dropping rows after ``keep_up_to_step`` (work a resume redoes)."""
        self.path = Path(path)
        rows = [r for r in read_metrics(self.path) if int(float(r["step"])) <= keep_up_to_step]
        columns = list(BASE_COLUMNS)
        for row in rows:
            columns += [key for key in row if key not in columns]
        self.columns = columns
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns += new
            self._rewrite(read_metrics(self.path))
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(
                {key: _fmt(value) for key, value in row.items()}
            )


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of strings (empty where a row has no value)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_episode(
    driver: Driver, policy: Callable[[np.ndarray], np.ndarray], seed: int
) -> dict[str, float]:
    """One full episode; re-runs it (same seed) if the simulator is lost mid-way."""
    while True:
        try:
            current = driver.reset(seed)
            totals = {key: 0.0 for key in EVAL_KEYS}
            abs_steer_sum = 0.0
            while True:
                current = driver.step(policy(current.obs))
                totals["episode_return"] += current.reward
                totals["distance_m"] += current.distance_m
                totals["collisions"] += current.collisions
                totals["episode_steps"] += 1
                abs_steer_sum += current.abs_steer
                if current.terminated or current.truncated:
                    totals["mean_abs_steer"] = abs_steer_sum / totals["episode_steps"]
                    return totals
        except EpisodeLost:
            continue


def evaluate(
    driver: Driver, policy: Callable[[np.ndarray], np.ndarray], seeds: Iterable[int]
) -> dict[str, float]:
    """Means over one episode per seed, plus the std of the return."""
    episodes = [run_episode(driver, policy, seed) for seed in seeds]
    out = {key: float(np.mean([e[key] for e in episodes])) for key in EVAL_KEYS}
    out["episode_return_std"] = float(np.std([e["episode_return"] for e in episodes]))
    return out


def _floats(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key, "") != "" else math.nan for r in rows])


def plot_learning_curve(metrics_path: Path, out_png: Path, title: str = "") -> None:
    """Eval return and distance vs agent step (train episodes faint behind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r["phase"] == "train"]
    evals = [r for r in rows if r["phase"] == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in (
        (axes[0], "episode_return", "episode return"),
        (axes[1], "distance_m", "distance driven (m)"),
    ):
        if train:
            ax.plot(_floats(train, "step"), _floats(train, key), ".", alpha=0.25, label="train")
        if evals:
            ax.plot(_floats(evals, "step"), _floats(evals, key), "o-", label="eval (mean)")
        ax.set_xlabel("agent step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)
