"""Episodes of ``semore-finetune`` outside its training loop (evaluation episodes in random
streams of their own, the replay of an open training episode on resume), and the run folder's
records: the metrics CSV, the learning-curve plot and the summary."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.files import atomic_save, atomic_write
from pipeline.sim.driver import AgentStep, Driver, EpisodeLost

# A run folder's records: one row per training episode and per evaluation, the evaluation
# curve, and the summary written when the run reaches its budget.
METRICS_NAME = "metrics.csv"
CURVE_NAME = "learning_curve.png"
SUMMARY_NAME = "summary.json"
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
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, text.getvalue())

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


@dataclass
class EpisodeStats:
    """Sums over one episode's agent steps; :meth:`summary` gives the ``EVAL_KEYS``."""

    episode_return: float = 0.0
    distance_m: float = 0.0
    collisions: int = 0
    abs_steer_sum: float = 0.0
    episode_steps: int = 0

    def add(self, step: AgentStep) -> None:
        self.episode_return += step.reward
        self.distance_m += step.distance_m
        self.collisions += int(step.collisions)
        self.abs_steer_sum += step.abs_steer
        self.episode_steps += 1

    def summary(self) -> dict[str, float]:
        return {
            "episode_return": self.episode_return,
            "distance_m": self.distance_m,
            "collisions": self.collisions,
            "mean_abs_steer": self.abs_steer_sum / max(self.episode_steps, 1),
            "episode_steps": self.episode_steps,
        }


def run_episode(
    driver: Driver,
    policy: Callable[[np.ndarray], np.ndarray | None],
    seed: int,
    on_step: Callable[[AgentStep, bool], None] | None = None,
) -> dict[str, float]:
    """One full episode; re-runs it (same seed) if the simulator is lost mid-way.
    ``on_step(step, first)`` sees every step, the reset one first (again on a re-run)."""
    while True:
        try:
            current = driver.reset(seed)
            if on_step is not None:
                on_step(current, True)
            stats = EpisodeStats()
            while True:
                current = driver.step(policy(current.obs))
                stats.add(current)
                if on_step is not None:
                    on_step(current, False)
                if current.terminated or current.truncated:
                    return stats.summary()
        except EpisodeLost:
            continue


def replay_episode(
    driver: Driver,
    seed: int,
    actions: Iterable[np.ndarray],
    on_step: Callable[[AgentStep, bool], None] | None = None,
) -> tuple[AgentStep, EpisodeStats]:
    """Re-run the start of an episode: reset with ``seed``, apply ``actions`` in order; the
    latest step and the episode's sums so far (a deterministic simulator lands where it was).
    ``on_step(step, first)`` sees every step, the reset one first."""
    current = driver.reset(seed)
    if on_step is not None:
        on_step(current, True)
    stats = EpisodeStats()
    for action in actions:
        current = driver.step(action)
        stats.add(current)
        if on_step is not None:
            on_step(current, False)
    return current, stats


@contextlib.contextmanager
def own_random_streams(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on torch and numpy global generators seeded with ``seed``, and give the
    caller's generators back untouched afterwards: what the block draws changes nothing
    outside it."""
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % (1 << 32))
            yield
    finally:
        np.random.set_state(numpy_state)


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


# What every curve plot shows: (metrics.csv column, axis label).
CURVE_METRICS = (("episode_return", "episode return"), ("distance_m", "distance driven (m)"))


@dataclass
class Curve:
    """One line per metric of :data:`CURVE_METRICS`, optionally with a shaded band."""

    steps: np.ndarray  # (S,) agent steps
    values: dict[str, np.ndarray]  # metric -> (S,)
    bands: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # (low, high)
    style: str = "o-"
    alpha: float = 1.0


def metrics_curve(metrics_path: Path, phase: str = "eval") -> Curve:
    """The ``phase`` rows ("eval" or "train") of a run's metrics.csv as a curve."""
    rows = [r for r in read_metrics(metrics_path) if r.get("phase") == phase]
    values = {key: _floats(rows, key) for key, _ in CURVE_METRICS}
    if phase == "train":
        return Curve(_floats(rows, "step"), values, style=".", alpha=0.25)
    return Curve(_floats(rows, "step"), values)


def plot_curves(curves: dict[str, Curve], out_png: Path, title: str = "") -> Path:
    """Return and distance against agent step, one line (and band) per labelled curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(10, 3.8))
    for ax, (key, label) in zip(axes, CURVE_METRICS, strict=True):
        for name, curve in curves.items():
            if not len(curve.steps):
                continue
            ax.plot(curve.steps, curve.values[key], curve.style, alpha=curve.alpha, label=name)
            if key in curve.bands:
                ax.fill_between(curve.steps, *curve.bands[key], alpha=0.2)
        ax.set_xlabel("agent step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save(out_png, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return out_png


def plot_learning_curve(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    """One run's evaluation curve, its training episodes faint behind."""
    curves = {
        "train": metrics_curve(metrics_path, "train"),
        "eval (mean)": metrics_curve(metrics_path),
    }
    return plot_curves(curves, out_png, title)


def write_summary(out: Path, title: str, counters: dict) -> dict:
    """``learning_curve.png`` and ``summary.json`` of the run folder ``out`` from its
    metrics.csv: the final and best evaluations, then ``counters`` (steps, episodes, updates,
    wall time, what the run started from); returns the summary."""
    plot_learning_curve(out / METRICS_NAME, out / CURVE_NAME, title=title)
    evals = [r for r in read_metrics(out / METRICS_NAME) if r["phase"] == "eval"]
    final = {k: float(v) for k, v in evals[-1].items() if k != "phase" and v != ""}
    best = max(float(r["episode_return"]) for r in evals)
    summary = {"final_eval": final, "best_eval_return": best, **counters}
    atomic_write(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary
