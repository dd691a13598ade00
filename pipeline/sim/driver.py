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

from pipeline.data import schema
from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv, SimulatorConnectionError
from semore.replay import FrameStack

log = logging.getLogger(__name__)

MOTION_DIM = len(schema.MOTION_TARGETS)


class EpisodeLost(Exception):
    """The simulator failed mid-episode and was reconnected; start a new episode."""


def motion_targets(state: dict) -> np.ndarray:
    """Ego-motion targets (MOTION_DIM,) float32 from a simulator state, in schema order and
    units (the agent standardises them, the same way whatever its encoder)."""
    return schema.motion_targets(state, "simulator ")


@dataclass
class AgentStep:
    """The outcome of one agent step (``action_repeat`` simulator steps)."""

    obs: np.ndarray  # (3K, H, W) uint8, oldest frame first
    frame: np.ndarray  # (H, W, 3) uint8, the newest frame (what the replay buffer stores)
    motion: np.ndarray | None  # (MOTION_DIM,) targets at the newest frame, in schema units
    reward: float = 0.0  # summed over the repeats
    terminated: bool = False
    truncated: bool = False
    distance_m: float = 0.0  # true distance, summed over every simulator step
    collisions: int = 0
    abs_steer: float = 0.0  # mean |steer| over the repeats
    sim_steps: int = 0  # simulator steps taken (fewer than action_repeat at an episode end)
    # The simulator's privileged state at the newest frame (what the scene captioner reads;
    # guided fine-tuning captions the replayed frames from it).
    state: dict | None = None


class Driver:
    """Runs an agent in a :class:`DrivingEnv` (see the module docstring)."""

    def __init__(
        self,
        env: DrivingEnv,
        action_repeat: int,
        frame_stack: int,
        max_retries: int = 0,
        with_motion: bool = False,
    ) -> None:
        self.env = env
        self.action_repeat = int(action_repeat)
        self.max_retries = int(max_retries)
        self.with_motion = with_motion
        self._stack = FrameStack(frame_stack)
        self._failures = 0  # consecutive simulator failures

    def _motion(self, state: dict) -> np.ndarray | None:
        return motion_targets(state) if self.with_motion else None

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
        obs = self._stack.reset(frame)
        return AgentStep(obs=obs, frame=frame, motion=self._motion(state), state=state)

    def step(self, action: np.ndarray | None) -> AgentStep:
        """Apply ``action`` (None: the backend's expert) for ``action_repeat`` simulator steps;
        EpisodeLost on a failure."""
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
        out.state = result.state
        return out

    def close(self) -> None:
        self.env.close()
