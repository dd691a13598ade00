"""Data-collection policies: the backend's expert, uniform random actions, a mix of the two,
or the expert with injected perturbations (DART-style) that it then recovers from."""

from __future__ import annotations

import numpy as np

from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv
from pipeline.sim.configs import PolicyConfig


class CollectionPolicy:
    """Chooses each step's action; ``None`` means "let the backend's expert drive".

    ``mixed`` draws expert-or-random once per episode or once per step (``mixed_mode``),
    from the episode's own generator so that episodes are reproducible one by one.
    """

    def __init__(self, cfg: PolicyConfig, action_dim: int):
        self.cfg = cfg
        self.action_dim = action_dim
        self._rng = np.random.default_rng(0)
        self._episode_expert = True
        self._burst_left, self._burst_steer = 0, 0.0

    def start_episode(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._episode_expert = self._draw_expert()
        self._burst_left, self._burst_steer = 0, 0.0

    def act(self, env: DrivingEnv) -> tuple[np.ndarray | None, str]:
        """(action or None for the expert, the name recorded in step.json)."""
        if self.cfg.name == "perturbed":
            return self._perturbed(env), "perturbed"
        if self.cfg.name == "mixed" and self.cfg.mixed_mode == "step":
            expert = self._draw_expert()
        else:
            expert = self._episode_expert
        if expert and self.cfg.perturb_expert:
            return self._perturbed(env), "perturbed"
        if expert:
            return None, "expert"
        action = self._rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)
        return action, "random"

    def _perturbed(self, env: DrivingEnv) -> np.ndarray:
        expert = env.expert_action()
        if expert is None:
            raise SemoreError(
                "policy perturbed needs the expert's action before the step, which this backend "
                "does not give (CARLA's autopilot acts inside the tick): expected the highway backend"
            )
        cfg, rng = self.cfg, self._rng
        if self._burst_left == 0 and rng.random() < cfg.perturb_prob:
            self._burst_left = cfg.perturb_steps
            self._burst_steer = float(rng.uniform(-cfg.perturb_steer, cfg.perturb_steer))
        action = np.array(expert, dtype=np.float64)
        action += rng.normal(0.0, cfg.action_noise_std, size=action.shape)
        if self._burst_left > 0:
            self._burst_left -= 1
            action[-1] += self._burst_steer  # steering is the last component
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _draw_expert(self) -> bool:
        if self.cfg.name == "expert":
            return True
        if self.cfg.name == "random":
            return False
        return bool(self._rng.random() < self.cfg.expert_prob)
