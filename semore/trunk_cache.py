"""Frozen lower layers whose token grids are cached per stored frame (``encoder_trainable_from``).

Where an end-to-end update's time goes (``benchmarks/rl_update.py``, batch 128, 84x84x9,
channels-last + bf16, one CPU thread): the two conv trunks at full resolution (forward of
``obs`` and ``next_obs``, backward of ``obs``) are ~90% of it; the DrQ shifts ~5-15%; the heads
~2%. Above the trunks, the cross-stream attention over the 8x8 grid is most of what is left
(its bf16 backward is slow on CPU). PiSCO finds that lower layers transfer and upper ones need
adapting, so the layers below a cache point are fixed and their token grids stored once per
frame (float16, S x N x C values: 2 x 64 x 32 = 8 KB for the default encoder, 0.8 GB per 100k
frames):

- "interaction": the trunks' pooled maps; updates train interaction, projections and fusion;
- "projection": the interaction's output; updates train the stream projections (the 2 x 0.5M
  weights that read the token grid) and fusion: the one that matches a frozen arm's cost.

DrQ's random shift acts on pixels and is left out on cached tokens, as it is on a frozen
encoder's cached features: a +-4 px shift is under half a cell of the 8x8 grid, so no exact
equivalent exists on the pooled map, and an approximate one would make the cached arm differ
from the frozen arm in augmentation as well as in what trains.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from semore.encoder import SemoreEncoder

TOKEN_DTYPE = np.float16  # half of float32; post-ReLU means of O(1) keep ~3 significant digits


def token_shape(encoder: SemoreEncoder) -> tuple[int, int, int]:
    """(S, N, C) of :meth:`SemoreEncoder.trunk_tokens`: streams, grid cells, filters."""
    streams = int(encoder.use_sem) + int(encoder.use_mot)
    return streams, encoder.grid[0] * encoder.grid[1], encoder.config.num_filters


def token_dim(encoder: SemoreEncoder) -> int:
    """Values stored per frame: S * N * C."""
    streams, cells, filters = token_shape(encoder)
    return streams * cells * filters


def _cache_point(encoder: SemoreEncoder) -> str:
    point = getattr(encoder, "frozen_below", None)
    if point is None:
        raise ValueError(
            "token cache of an encoder with nothing frozen; expected encoder.freeze_below("
            "'interaction' or 'projection') first"
        )
    return point


def _interact_fp32(encoder: SemoreEncoder, tokens: Tensor) -> Tensor:
    # float32 even under bf16 autocast: CPU flash attention's bf16 backward took ~150 ms per
    # call at batch 128 against ~20 ms in float32 (benchmarks/rl_update.py).
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        return encoder.interact(tokens.float())


@torch.no_grad()
def tokens_to_cache(encoder: SemoreEncoder, obs: Tensor) -> Tensor:
    """(B, S, N, C) tokens below the encoder's first trainable layer, for (B, 3K, H, W) frames."""
    tokens = encoder.trunk_tokens(obs)
    return _interact_fp32(encoder, tokens) if _cache_point(encoder) == "projection" else tokens


@torch.no_grad()
def cached_tokens(encoder: SemoreEncoder, obs: np.ndarray, device: torch.device) -> np.ndarray:
    """The flat token grid (S*N*C,) float16 of one stacked observation (3K, H, W) uint8."""
    if obs.ndim != 3:
        raise ValueError(f"cached_tokens obs shape {obs.shape}; expected (3K, H, W)")
    was_training = encoder.training
    encoder.train(False)
    try:
        tokens = tokens_to_cache(encoder, torch.as_tensor(obs, device=device).unsqueeze(0).float())
    finally:
        encoder.train(was_training)
    return tokens[0].float().flatten().cpu().numpy().astype(TOKEN_DTYPE)


def encode_tokens(encoder: SemoreEncoder, flat: Tensor) -> dict[str, Tensor]:
    """{"h", "z_sem"?, "z_mot"?} from cached flat tokens (B, S*N*C): the layers above the
    cache, as :meth:`SemoreEncoder.encode` gives them from frames."""
    tokens = flat.float().unflatten(1, token_shape(encoder))  # (B, S, N, C)
    if _cache_point(encoder) == "interaction":
        tokens = _interact_fp32(encoder, tokens)
    return encoder.project(tokens)


def h_from_tokens(encoder: SemoreEncoder, flat: Tensor) -> Tensor:
    """h (B, repr_dim) from cached flat tokens (B, S*N*C): the layers above the cache."""
    return encode_tokens(encoder, flat)["h"]


@torch.no_grad()
def features_of_tokens(
    encoder: SemoreEncoder, flat: np.ndarray, device: torch.device
) -> np.ndarray:
    """h (repr_dim,) float32 of one cached token grid (for acting on what was stored)."""
    was_training = encoder.training
    encoder.train(False)
    try:
        h = h_from_tokens(encoder, torch.as_tensor(flat, device=device).unsqueeze(0))
    finally:
        encoder.train(was_training)
    return h[0].float().cpu().numpy()


def encode_cached_batch(
    encoder: SemoreEncoder, batch: dict[str, Tensor], trainable: bool
) -> tuple[Tensor, Tensor]:
    """(h, next_h) of a batch with "obs_tokens" / "next_obs_tokens": ``h`` with gradient into
    the layers above the trunks when ``trainable``, ``next_h`` never (as for frames)."""
    with torch.set_grad_enabled(trainable):
        h = h_from_tokens(encoder, batch["obs_tokens"])
    with torch.no_grad():
        next_h = h_from_tokens(encoder, batch["next_obs_tokens"])
    return h, next_h
