"""The simulator interface every backend implements, and the shared reward.

A backend drives one ego vehicle. ``step(None)`` lets the backend's expert drive (IDM +
MOBIL on highway, Traffic Manager autopilot on CARLA) and reports the action it applied,
so the recorded action is always the control that was really executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.errors import SemoreError
from semore.checks import MAX_WEIGHT, Float, check_fields

# Actions are 2-D in [-1, 1]: highway = [acceleration, steering], CARLA = [steer, throttle_brake].
ACTION_DIM = 2


@dataclass
class RewardConfig:
    """DBC-style reward: progress along the road minus collision and steering penalties."""

    # 1.0 so that the return of an episode is the distance driven in metres.
    progress_coef: float = 1.0
    # DBC uses 1e-4 per unit of CARLA collision impulse (N*s); highway has no impulse, so a
    # collision there counts as `highway_collision_impulse` (see the highway backend).
    collision_coef: float = 1e-4
    # DBC's |steer| penalty weight.
    steer_coef: float = 1.0

    def __post_init__(self) -> None:
        coef = Float(-MAX_WEIGHT, MAX_WEIGHT)
        check_fields(self, progress_coef=coef, collision_coef=coef, steer_coef=coef)


def driving_reward(
    cfg: RewardConfig, forward_distance_m: float, collision_impulse: float, steer: float
) -> float:
    """``progress_coef * v_lon*dt - collision_coef * impulse - steer_coef * |steer|``."""
    return float(
        cfg.progress_coef * forward_distance_m
        - cfg.collision_coef * collision_impulse
        - cfg.steer_coef * abs(steer)
    )


def checked_action(action: object, backend: str, names: tuple[str, ...]) -> np.ndarray:
    """``action`` as float32 (ACTION_DIM,) clipped to [-1, 1]; a one-line error when it has
    the wrong size or a non-finite value."""
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
        raise SemoreError(
            f"{backend} action {action.tolist()} is invalid: expected {ACTION_DIM} finite "
            f"values [{', '.join(names)}] in [-1, 1]"
        )
    return np.clip(action, -1.0, 1.0)


class SimulatorConnectionError(SemoreError):
    """The simulator server is unreachable, timed out or crashed; the episode may be re-run."""


@dataclass
class StepResult:
    """One environment step.

    ``frames`` maps camera name -> (H, W, 3) uint8 (one entry, "rgb", on single-camera
    backends; per-camera entries plus "rgb" = the stitched panorama on multi-camera ones).
    ``state`` is JSON-serialisable with units in field names (``speed_mps``...).
    ``distance_m`` is the true forward distance over all simulator ticks of this step.
    """

    frames: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    state: dict
    distance_m: float = 0.0
    info: dict = field(default_factory=dict)


class DrivingEnv(Protocol):
    """What the collector, the annotator and the RL loop need from a simulator."""

    action_dim: int
    camera_names: list[str]  # names of the member images, "rgb" first
    image_shape: tuple[int, int]  # (H, W) of the "rgb" frame

    def reset(self, seed: int) -> tuple[dict[str, np.ndarray], dict]:
        """Start an episode; return (frames, state)."""

    def step(self, action: np.ndarray | None) -> StepResult:
        """Advance one step; ``None`` lets the expert drive."""

    def expert_action(self) -> np.ndarray | None:
        """The action the expert would take now (to perturb it), or None where it is only
        known after the step (CARLA's autopilot applies its control inside the tick)."""

    @property
    def step_duration_s(self) -> float:
        """Simulated seconds per ``step``."""

    def reconnect(self) -> None:
        """Re-establish the simulator after a ``SimulatorConnectionError`` (no-op offline)."""

    def close(self) -> None:
        """Release the simulator."""
