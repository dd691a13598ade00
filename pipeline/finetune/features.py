"""What the fine-tuning replay stores per frame besides the frame, by encoder regime.

- a frozen (or warming-up) encoder: its representation h (float32, repr_dim values);
- a trained encoder whose lower layers are frozen (``encoder_trainable_from`` interaction or
  projection): their token grids (float16, S x N x C values; :mod:`semore.trunk_cache`), in
  every phase;
- an encoder trained from the pixels: nothing (updates encode the frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from semore.sac import SACAgent
from semore.trunk_cache import TOKEN_DTYPE, cached_tokens, features_of_tokens, token_dim

if TYPE_CHECKING:
    from pipeline.finetune.config import FinetuneConfig


def replay_features(cfg: FinetuneConfig, encoder: nn.Module) -> dict:
    """ReplayBuffer keyword arguments for what ``cfg``'s regime stores per frame of
    ``encoder``."""
    if cfg.caches_tokens:
        return {
            "feature_dim": token_dim(encoder),
            "feature_dtype": TOKEN_DTYPE,
            "feature_key": "tokens",
        }
    if cfg.encoder_mode in ("frozen", "warmup"):
        return {"feature_dim": encoder.repr_dim}
    return {"feature_dim": 0}


def stored_features(agent: SACAgent, key: str, obs: np.ndarray) -> np.ndarray:
    """What the replay stores for ``obs`` under ``key`` ("h" or "tokens")."""
    if key == "tokens":
        return cached_tokens(agent.encoder, obs, agent.device)
    return agent.features(obs)


def acting_features(agent: SACAgent, key: str, stored: np.ndarray) -> np.ndarray:
    """h (repr_dim,) to act on from what was stored, so acting sees what updates see."""
    if key == "tokens":
        return features_of_tokens(agent.encoder, stored, agent.device)
    return stored
