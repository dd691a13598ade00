"""Encoders of the baselines Semore is compared with, and the one constructor for every kind.

``drqv2``: the encoder of DrQ-v2 (Yarats et al. 2021, "Mastering Visual Continuous Control:
Improved Data-Augmented Reinforcement Learning"), what a user would run instead of Semore: one
DrQ conv trunk over the whole frame stack (32 filters, 3x3, strides 2, 1, 1, 1: a 35x35 map for
84 px frames), flattened, then Linear + LayerNorm + tanh to ``repr_dim`` (DrQ-v2 puts that
projection in its critic's trunk; here it is the encoder's last layer, so the critic's gradient
trains all of it and the actor reads the detached output through its own projection, as in
every arm). Trained end to end from the pixels, it has no token grid, no streams and no
pretraining heads: it runs frozen or end to end, never guided.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import Tensor, nn

from semore.encoder import EncoderConfig, SemoreEncoder, conv_trunk, trunk_output_size
from semore.layers import orthogonal_init


class DrQv2Encoder(nn.Module):
    """DrQ-v2's conv encoder with its Linear + LayerNorm + tanh projection; ``forward`` returns
    h of shape (B, repr_dim) from (B, 3K, H, W) frames in the uint8 range."""

    def __init__(self, frame_stack: int, image_height: int, image_width: int, **arch: Any) -> None:
        super().__init__()
        self.config = cfg = EncoderConfig(frame_stack, image_height, image_width, **arch)
        if cfg.kind != "drqv2":
            raise ValueError(f"DrQv2Encoder kind={cfg.kind!r}; expected 'drqv2'")
        self.repr_dim = cfg.repr_dim
        self.trunk = conv_trunk(3 * frame_stack, cfg.num_filters, "drq")
        map_height, map_width = trunk_output_size(image_height, image_width, "drq")
        self.project = nn.Sequential(
            nn.Linear(cfg.num_filters * map_height * map_width, cfg.repr_dim),
            nn.LayerNorm(cfg.repr_dim),
            nn.Tanh(),
        )
        self.apply(orthogonal_init)  # DrQ-v2's weight_init: orthogonal, zero biases

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.float() / 255.0 - 0.5  # (B, 3K, H, W), in [-0.5, 0.5] as in DrQ-v2
        return self.project(self.trunk(x).flatten(1))  # (B, C * h * w) -> (B, repr_dim)


def make_encoder(cfg: EncoderConfig) -> SemoreEncoder | DrQv2Encoder:
    """A fresh encoder of ``cfg.kind`` with ``cfg``'s geometry and architecture."""
    if cfg.kind == "drqv2":
        return DrQv2Encoder(**asdict(cfg))
    return SemoreEncoder.from_config(cfg)
