"""Dual-stream (semantic + motion) image encoder with cross-stream interaction.

Layout of one forward pass for ``obs`` of shape (B, 3K, H, W), frames oldest first:

  semantic trunk (latest frame)          motion trunk (K frames + K-1 differences)
        |                                         |
  token grid (<= max_tokens positions, same grid for both streams): the DrQ trunk's 35x35
  map average-pooled to 8x8 (default), or a strided trunk's smaller map (16x16 pooled, 7x7)
        |  <---- bidirectional cross-attention, gated residuals (gate 0 at init) ---->  |
  flatten -> Linear -> z_sem (256)                      flatten -> Linear -> z_mot (256)
        \\_____________________ concat ____________________/
                 h = tanh(LayerNorm(Linear(.)))  (repr_dim, default 50)
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.checks import CheckError
from semore.encoder_config import (  # noqa: F401  (EncoderArch and the limits: read from here too)
    KINDS,
    MAX_FILTERS,
    MAX_FRAME_STACK,
    MAX_TOKENS,
    MIN_IMAGE_SIZE,
    STREAM_DIM,
    STREAMS,
    TRUNK_STRIDES,
    TRUNKS,
    EncoderArch,
    EncoderConfig,
)
from semore.export_schema import check_payload
from semore.layers import orthogonal_init

ENCODER_FORMAT = "semore-encoder"
ENCODER_FORMAT_VERSION = 1
# Where a trained encoder may start training (SemoreEncoder.freeze_below): the layers below it.
CACHE_POINTS = {"interaction": ("sem_trunk", "mot_trunk"),
                "projection": ("sem_trunk", "mot_trunk", "interaction")}  # fmt: skip


def conv_trunk(in_channels: int, num_filters: int, trunk: str = "drq") -> nn.Sequential:
    """Four 3x3 convs, no padding: "drq" strides 2, 1, 1, 1 (DrQ); "strided" 2, 2, 2, 1 (ATC)."""
    strides = TRUNK_STRIDES[trunk]
    layers: list[nn.Module] = []
    for index, stride in enumerate(strides):
        layers += [
            nn.Conv2d(in_channels if index == 0 else num_filters, num_filters, 3, stride),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


def trunk_output_size(image_height: int, image_width: int, trunk: str = "drq") -> tuple[int, int]:
    """Spatial size of the trunk's feature map for an (H, W) input (84 -> 35 drq, 7 strided)."""
    strides = TRUNK_STRIDES[trunk]
    size = [image_height, image_width]
    for stride in strides:
        size = [(side - 3) // stride + 1 for side in size]
    return size[0], size[1]


def first_conv_on_pixels(conv: nn.Conv2d, frame_stack: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``conv`` moved onto raw 0..255 pixels of ``frame_stack`` frames.

    ``conv`` reads the frames scaled to [-0.5, 0.5] (3K channels) and, when it has more
    input channels, their K-1 consecutive differences after them (3(K-1) channels). Both are
    linear in the pixels p: x_j = p_j / 255 - 0.5 and d_i = (p_{i+1} - p_i) / 255, so
    W_x . x + W_d . d + b = W' . p + b' with W'_j = (W_x[j] + W_d[j-1] - W_d[j]) / 255 (the
    missing terms at j = 0 and j = K-1 left out) and b' = b - 0.5 * sum(W_x). With no padding
    every output reads only real pixels, so the two are the same function.
    """
    weight = conv.weight  # (F, 3K [+ 3(K-1)], 3, 3)
    frames = weight[:, : 3 * frame_stack].unflatten(1, (frame_stack, 3))  # (F, K, 3, 3, 3)
    bias = conv.bias - 0.5 * frames.sum(dim=(1, 2, 3, 4))
    if weight.shape[1] > 3 * frame_stack:
        diffs = weight[:, 3 * frame_stack :].unflatten(1, (frame_stack - 1, 3))  # (F, K-1, ...)
        zero = torch.zeros_like(diffs[:, :1])
        # frame j gains W_d[j-1] (as the later frame of difference j-1) and loses W_d[j]
        frames = frames + torch.cat([zero, diffs], 1) - torch.cat([diffs, zero], 1)
    return frames.flatten(1, 2) / 255.0, bias


def token_grid(map_height: int, map_width: int, max_tokens: int = MAX_TOKENS) -> tuple[int, int]:
    """Largest grid with <= max_tokens cells that follows the map's aspect ratio."""
    rows = max(1, min(map_height, round(math.sqrt(max_tokens * map_height / map_width))))
    cols = max(1, min(map_width, max_tokens // rows))
    return rows, cols


class CrossStreamInteraction(nn.Module):
    """One bidirectional cross-attention layer between two token sets, gated residuals.

    Each stream queries the other with the *pre-update* tokens of both, so the exchange is
    symmetric. ``tanh(gate)`` starts at 0, so at initialisation the layer is the identity.
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int) -> None:
        super().__init__()
        # Learned positions: attention alone is blind to where a token sits in the image.
        self.position = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.norm_sem = nn.LayerNorm(dim)
        self.norm_mot = nn.LayerNorm(dim)
        self.sem_from_mot = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mot_from_sem = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.gate_sem = nn.Parameter(torch.zeros(1))
        self.gate_mot = nn.Parameter(torch.zeros(1))

    def forward(self, sem: Tensor, mot: Tensor) -> tuple[Tensor, Tensor]:
        # sem, mot: (B, N, C)
        sem_in = self.norm_sem(sem) + self.position
        mot_in = self.norm_mot(mot) + self.position
        sem_msg, _ = self.sem_from_mot(sem_in, mot_in, mot_in, need_weights=False)
        mot_msg, _ = self.mot_from_sem(mot_in, sem_in, sem_in, need_weights=False)
        return sem + torch.tanh(self.gate_sem) * sem_msg, mot + torch.tanh(self.gate_mot) * mot_msg


class SemoreEncoder(nn.Module):
    """Semantic + motion dual-stream encoder; ``forward`` returns h of shape (B, repr_dim)."""

    def __init__(self, frame_stack: int, image_height: int, image_width: int, **arch: Any) -> None:
        """``arch``: fields of :class:`EncoderArch` (its defaults where left out)."""
        super().__init__()
        self.config = cfg = EncoderConfig(frame_stack, image_height, image_width, **arch)
        if cfg.kind != "semore":
            raise ValueError(
                f"SemoreEncoder kind={cfg.kind!r}; expected 'semore' (see semore.baselines)"
            )
        num_filters, repr_dim, streams = cfg.num_filters, cfg.repr_dim, cfg.streams
        interaction, num_heads, max_tokens = cfg.interaction, cfg.num_heads, cfg.max_tokens
        self.frame_stack = frame_stack
        self.repr_dim = repr_dim
        self.use_sem = streams in ("semantic", "both")
        self.use_mot = streams in ("motion", "both")
        self.sem_dim = STREAM_DIM if self.use_sem else 0
        self.mot_dim = STREAM_DIM if self.use_mot else 0

        map_size = trunk_output_size(image_height, image_width, cfg.trunk)
        self.grid = token_grid(*map_size, max_tokens)
        num_tokens = self.grid[0] * self.grid[1]
        # The strided trunk's map is the grid itself: no pooling pass at all.
        self.pool = (
            nn.Identity() if tuple(map_size) == self.grid else nn.AdaptiveAvgPool2d(self.grid)
        )
        flat_dim = num_filters * num_tokens

        if self.use_sem:
            self.sem_trunk = conv_trunk(3, num_filters, cfg.trunk)
            self.sem_out = nn.Linear(flat_dim, self.sem_dim)
        if self.use_mot:
            # K frames plus K-1 consecutive differences (none when K == 1).
            mot_channels = 3 * frame_stack + 3 * (frame_stack - 1)
            self.mot_trunk = conv_trunk(mot_channels, num_filters, cfg.trunk)
            self.mot_out = nn.Linear(flat_dim, self.mot_dim)
        self.interaction = None
        if interaction and self.use_sem and self.use_mot:
            self.interaction = CrossStreamInteraction(num_filters, num_heads, num_tokens)

        self.fuse = nn.Sequential(
            nn.Linear(self.sem_dim + self.mot_dim, repr_dim), nn.LayerNorm(repr_dim), nn.Tanh()
        )
        self.apply(orthogonal_init)

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> SemoreEncoder:
        return cls(**asdict(cfg))

    def _tokens(self, trunk: nn.Sequential, pixels: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """(B, N, C) tokens of ``trunk`` whose first conv is given as pixel-space weights."""
        first = trunk[0]
        feature_map = F.conv2d(pixels, weight, bias, first.stride)
        feature_map = self.pool(trunk[1:](feature_map))  # (B, C, rows, cols)
        return feature_map.flatten(2).transpose(1, 2)  # (B, N, C)

    def freeze_below(self, layer: str) -> None:
        """Fix every layer below ``layer`` for good ("interaction": the conv trunks;
        "projection": the trunks and the interaction); ``requires_grad_`` then leaves them out,
        so the layers above train alone on tokens cached per stored frame (PiSCO: lower layers
        transfer, upper ones need adapting)."""
        if layer not in CACHE_POINTS:
            raise ValueError(f"freeze_below layer={layer!r}; expected one of {list(CACHE_POINTS)}")
        self.frozen_below = layer
        for name in CACHE_POINTS[layer]:
            if getattr(self, name, None) is not None:
                getattr(self, name).requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True) -> SemoreEncoder:
        super().requires_grad_(requires_grad)
        if getattr(self, "frozen_below", None) is not None:
            self.freeze_below(self.frozen_below)
        return self

    def trunk_tokens(self, obs: Tensor) -> Tensor:
        """The pooled trunk maps (B, S, N, C) of the S enabled streams (semantic first)."""
        cfg = self.config
        expected = (3 * cfg.frame_stack, cfg.image_height, cfg.image_width)
        if obs.dim() != 4 or tuple(obs.shape[1:]) != expected:
            raise ValueError(
                f"SemoreEncoder input shape {tuple(obs.shape)}; expected (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) for frame_stack={cfg.frame_stack}"
            )
        # The frames are scaled to [-0.5, 0.5] and the motion stream also reads their K-1
        # differences; both are linear in the pixels, so they are folded into each trunk's
        # first conv (first_conv_on_pixels) instead of materialising the scaled frames and the
        # 3(2K-1)-channel input: same function, same parameters, a third fewer input passes.
        x = obs.float()  # (B, 3K, H, W), 0..255
        sem_tokens = mot_tokens = None
        if self.use_sem:
            weight, bias = first_conv_on_pixels(self.sem_trunk[0], 1)
            sem_tokens = self._tokens(self.sem_trunk, x[:, -3:], weight, bias)
        if self.use_mot:
            weight, bias = first_conv_on_pixels(self.mot_trunk[0], cfg.frame_stack)
            mot_tokens = self._tokens(self.mot_trunk, x, weight, bias)
        return torch.stack([t for t in (sem_tokens, mot_tokens) if t is not None], dim=1)

    def interact(self, tokens: Tensor) -> Tensor:
        """The cross-stream exchange on :meth:`trunk_tokens` (B, S, N, C); same shape out.

        In float32 even under bf16 autocast: CPU flash attention's bf16 backward took ~110 ms
        at batch 128, a third of a whole end-to-end update, against ~20 ms in float32
        (benchmarks/rl_update.py)."""
        if self.interaction is None:
            return tokens
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            sem_tokens, mot_tokens = self.interaction(*tokens.float().unbind(1))
        return torch.stack([sem_tokens, mot_tokens], dim=1)

    def project(self, tokens: Tensor) -> dict[str, Tensor]:
        """{"h", "z_sem"?, "z_mot"?} from :meth:`interact`'s tokens: stream projections, fusion."""
        streams = iter(tokens.unbind(1))
        sem_tokens = next(streams) if self.use_sem else None
        mot_tokens = next(streams) if self.use_mot else None
        out: dict[str, Tensor] = {}
        if sem_tokens is not None:
            out["z_sem"] = self.sem_out(sem_tokens.flatten(1))  # (B, sem_dim)
        if mot_tokens is not None:
            out["z_mot"] = self.mot_out(mot_tokens.flatten(1))  # (B, mot_dim)
        z = torch.cat([out[k] for k in ("z_sem", "z_mot") if k in out], dim=1)
        out["h"] = self.fuse(z)  # (B, repr_dim)
        return out

    def encode(self, obs: Tensor) -> dict[str, Tensor]:
        """Return {"h", "z_sem"?, "z_mot"?}; stream keys only for enabled streams."""
        return self.project(self.interact(self.trunk_tokens(obs)))

    def forward(self, obs: Tensor) -> Tensor:
        return self.encode(obs)["h"]


def save_encoder(
    path: str | os.PathLike,
    encoder: SemoreEncoder,
    metadata: dict[str, Any] | None = None,
    heads: dict[str, Any] | None = None,
) -> None:
    """Atomically write the encoder's config, weights and metadata to ``path``; ``heads``, if
    given, are the pretraining heads that guided fine-tuning keeps training (older exports
    have none and load as before)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "config": asdict(encoder.config),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "metadata": dict(metadata or {}),
        **({"heads": heads} if heads is not None else {}),
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _read_payload(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"encoder file {path} not found; expected a file written by save_encoder")
    try:
        # A foreign file (a bare pickle) makes torch warn before it refuses; the refusal
        # below says all there is to say.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files
        raise ValueError(
            f"encoder file {path} is not a readable torch file ({type(err).__name__}); "
            f"expected format {ENCODER_FORMAT!r}"
        ) from err
    found_format = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found_format != ENCODER_FORMAT:
        raise ValueError(
            f"encoder file {path} has format {found_format!r}; expected {ENCODER_FORMAT!r}"
        )
    version = payload.get("format_version")
    if version != ENCODER_FORMAT_VERSION:
        raise ValueError(
            f"encoder file {path} has format_version {version!r}; expected {ENCODER_FORMAT_VERSION}"
        )
    try:
        check_payload(payload)
    except CheckError as err:
        raise ValueError(f"encoder file {path}: {err}") from None
    return payload


def load_encoder_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the metadata dict stored by :func:`save_encoder`."""
    return dict(_read_payload(path).get("metadata") or {})


def load_pretrain_heads(path: str | os.PathLike) -> dict[str, Any] | None:
    """The pretraining heads stored by :func:`save_encoder`, or None for an export without."""
    return _read_payload(path).get("heads")


def load_encoder(path: str | os.PathLike, map_location: Any = "cpu") -> SemoreEncoder:
    """Rebuild an encoder from its export; ValueError naming the file on any mismatch."""
    return load_export(path, map_location)[0]


def load_export(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[SemoreEncoder, dict[str, Any]]:
    """The encoder and the metadata of an export, from one read of the file."""
    payload = _read_payload(path, map_location)
    # Exports written before the field ran the DrQ trunk.
    raw_config = {"trunk": "drq", **payload["config"]}
    known = {f.name for f in fields(EncoderConfig)}
    if set(raw_config) - known:
        raise ValueError(
            f"encoder file {path} has config keys {sorted(raw_config)}; expected keys among "
            f"{sorted(known)}"
        )
    try:
        config = EncoderConfig(**raw_config)  # checks every field before a module is built
    except CheckError as err:
        raise ValueError(f"encoder file {path}: {err.under('export.config')}") from None
    except ValueError as err:
        raise ValueError(f"encoder file {path}: config {err}") from None
    try:
        encoder = SemoreEncoder.from_config(config)
        encoder.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"encoder file {path} does not match its config: {first_line}") from err
    return encoder, dict(payload.get("metadata") or {})
