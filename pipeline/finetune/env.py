"""The agent's view of a simulator: action repeat, frame stacks, motion targets, reconnects.

:class:`Driver` wraps one :class:`pipeline.sim.base.DrivingEnv`. One agent step applies
the same action for ``action_repeat`` simulator steps, sums their rewards and true
distances, and returns the newest "rgb" frame stacked with the previous ones. On a
:class:`SimulatorConnectionError` (CARLA only) it reconnects and raises
:class:`EpisodeLost`, so the caller starts a new episode; more than ``max_retries``
consecutive failures end the run with a one-line error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.annotate.motion import motion_targets as raw_motion_targets
from pipeline.data import schema
from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv, SimulatorConnectionError
from semore.replay import FrameStack

log = logging.getLogger(__name__)

MOTION_DIM = len(schema.MOTION_TARGETS)


class EpisodeLost(Exception):
    """The simulator failed mid-episode and was reconnected; start a new episode."""


def motion_stats(metadata: dict, where: str = "encoder metadata") -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the motion targets from an export's metadata, else zeros and ones.

    Pretraining regresses standardised targets; using its statistics online keeps the
    motion head's targets on the same scale as the one the encoder was shaped by.
    """
    mean = metadata.get("motion_mean")
    std = metadata.get("motion_std")
    if mean is None or std is None:
        return np.zeros(MOTION_DIM, np.float32), np.ones(MOTION_DIM, np.float32)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != (MOTION_DIM,) or std.shape != (MOTION_DIM,):
        names = [name for name, _ in schema.MOTION_TARGETS]
        raise SemoreError(
            f"{where} motion_mean/motion_std have shapes {mean.shape}/{std.shape}: "
            f"expected {MOTION_DIM} values each, in the order {names}"
        )
    # A constant target (std 0) would divide by zero; leave it unscaled instead.
    return mean, np.where(std > 1e-8, std, 1.0).astype(np.float32)


def motion_targets(state: dict, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised ego-motion targets (MOTION_DIM,) float32 from a simulator state."""
    return ((raw_motion_targets(state, "simulator ") - mean) / std).astype(np.float32)


@dataclass
class AgentStep:
    """The outcome of one agent step (``action_repeat`` simulator steps)."""

    obs: np.ndarray  # (3K, H, W) uint8, oldest frame first
    frame: np.ndarray  # (H, W, 3) uint8, the newest frame (what the replay buffer stores)
    motion: np.ndarray | None  # (MOTION_DIM,) standardised targets at the newest frame
    reward: float = 0.0  # summed over the repeats
    terminated: bool = False
    truncated: bool = False
    distance_m: float = 0.0  # true distance, summed over every simulator step
    collisions: int = 0
    abs_steer: float = 0.0  # mean |steer| over the repeats
    sim_steps: int = 0  # simulator steps taken (fewer than action_repeat at an episode end)


class Driver:
    """Runs an agent in a :class:`DrivingEnv` (see the module docstring)."""

    def __init__(
        self,
        env: DrivingEnv,
        action_repeat: int,
        frame_stack: int,
        max_retries: int = 0,
        motion_mean: np.ndarray | None = None,
        motion_std: np.ndarray | None = None,
    ) -> None:
        self.env = env
        self.action_repeat = int(action_repeat)
        self.max_retries = int(max_retries)
        self.motion_mean = motion_mean
        self.motion_std = motion_std
        self._stack = FrameStack(frame_stack)
        self._failures = 0  # consecutive simulator failures

    def _motion(self, state: dict) -> np.ndarray | None:
        if self.motion_mean is None:
            return None
        return motion_targets(state, self.motion_mean, self.motion_std)

    def _recover(self, err: SimulatorConnectionError) -> None:
        self._failures += 1
        if self._failures > self.max_retries:
            raise SemoreError(
                f"{err} (gave up after {self.max_retries} consecutive reconnects)"
            ) from None
        log.warning(
            "simulator failure (%s); reconnecting and starting a new episode (%d/%d)",
            err,
            self._failures,
            self.max_retries,
        )
        self.env.reconnect()

    def reset(self, seed: int) -> AgentStep:
        """Start an episode; retries the reset itself after a reconnect."""
        while True:
            try:
                frames, state = self.env.reset(seed)
                break
            except SimulatorConnectionError as err:
                self._recover(err)
        frame = frames["rgb"]
        return AgentStep(obs=self._stack.reset(frame), frame=frame, motion=self._motion(state))

    def step(self, action: np.ndarray) -> AgentStep:
        """Apply ``action`` for ``action_repeat`` simulator steps; EpisodeLost on a failure."""
        out = AgentStep(obs=None, frame=None, motion=None)
        abs_steer_sum = 0.0
        try:
            for _ in range(self.action_repeat):
                result = self.env.step(action)
                out.sim_steps += 1
                out.reward += float(result.reward)
                out.distance_m += float(result.distance_m)
                out.collisions += int(bool(result.state.get("collision", False)))
                abs_steer_sum += abs(float(result.state.get("steer", 0.0)))
                if result.terminated or result.truncated:
                    break
        except SimulatorConnectionError as err:
            self._recover(err)
            raise EpisodeLost(str(err)) from None
        self._failures = 0
        out.terminated = bool(result.terminated)
        out.truncated = bool(result.truncated) and not out.terminated
        out.abs_steer = abs_steer_sum / out.sim_steps
        out.frame = result.frames["rgb"]
        out.obs = self._stack.step(out.frame)
        out.motion = self._motion(result.state)
        return out

    def close(self) -> None:
        self.env.close()
