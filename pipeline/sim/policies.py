"""Data-collection policies: the backend's expert, uniform random actions, or a mix."""

from __future__ import annotations

import numpy as np

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

    def start_episode(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._episode_expert = self._draw_expert()

    def act(self) -> tuple[np.ndarray | None, str]:
        """(action or None for the expert, the name recorded in step.json)."""
        if self.cfg.name == "mixed" and self.cfg.mixed_mode == "step":
            expert = self._draw_expert()
        else:
            expert = self._episode_expert
        if expert:
            return None, "expert"
        action = self._rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)
        return action, "random"

    def _draw_expert(self) -> bool:
        if self.cfg.name == "expert":
            return True
        if self.cfg.name == "random":
            return False
        return bool(self._rng.random() < self.cfg.expert_prob)
