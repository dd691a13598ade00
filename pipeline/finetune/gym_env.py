"""The fine-tuning task as a gymnasium environment: ``semore/Highway-v0``.

    import pipeline.finetune.gym_env  # registers the id (or: gymnasium.make(
    env = gymnasium.make("semore/Highway-v0")  #  "pipeline.finetune.gym_env:semore/Highway-v0"))

The environment is the one ``semore-finetune`` trains on, built from the same config and the
same :class:`~pipeline.sim.driver.Driver`: observations are the (3K, H, W) uint8 frame stacks
(oldest frame first), actions are ``[acceleration, steering]`` in [-1, 1] repeated
``action_repeat`` times, the reward is the DBC reward summed over the repeats, episodes end on
a crash or leaving the road (terminated) and at the time limit (truncated), and ``reset(seed=s)``
runs the simulator episode of seed ``s``. By default the task of the ``quickstart`` fine-tune
preset; ``gymnasium.make("semore/Highway-v0", config="my.yaml", overrides={...})`` selects
another preset or file, with ``--section.field``-style overrides as a nested dict.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pipeline.config import load_config
from pipeline.finetune.config import FinetuneConfig
from pipeline.sim import backend_spec, make_env
from pipeline.sim.base import ACTION_DIM
from pipeline.sim.driver import AgentStep, Driver
from pipeline.sim.seeding import SEED_RANGE

ENV_ID = "semore/Highway-v0"


class SemoreDrivingEnv(gym.Env):
    """A gymnasium view of the fine-tuning task (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        config: str = "quickstart",
        overrides: dict | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.cfg = load_config(FinetuneConfig, config, overrides or {}, stage="finetune")
        self.render_mode = render_mode
        spec = backend_spec(self.cfg.env)
        height, width = spec.image_shape
        self.observation_space = spaces.Box(
            0, 255, (3 * self.cfg.frame_stack, height, width), dtype=np.uint8
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self._sim = make_env(self.cfg.env)
        self._driver = Driver(self._sim, self.cfg.repeat, self.cfg.frame_stack, spec.max_retries)
        self._last: AgentStep | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Without a seed, one from the training-seed range.
        episode_seed = seed if seed is not None else int(self.np_random.integers(SEED_RANGE))
        self._last = self._driver.reset(episode_seed)
        return self._last.obs, {"episode_seed": episode_seed}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        self._last = step = self._driver.step(action)
        info = {
            "distance_m": step.distance_m,
            "collisions": step.collisions,
            "sim_steps": step.sim_steps,
        }
        return step.obs, float(step.reward), step.terminated, step.truncated, info

    def render(self) -> np.ndarray | None:
        """The newest frame (H, W, 3) uint8 with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return self._last.frame

    def close(self) -> None:
        self._sim.close()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=SemoreDrivingEnv)
