"""The networks SAC trains around an encoder's representation h: a tanh-squashed Gaussian
actor over a projection of its own and twin Q critics, plus the soft target update and an
eval-mode context (:mod:`semore.sac` holds the agent that trains them)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.layers import mlp, orthogonal_init


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, for parameters (buffers are left as they are)."""
    for target_param, online_param in zip(target.parameters(), online.parameters(), strict=True):
        target_param.lerp_(online_param, tau)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was_training)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy over its own projection of a representation h.

    The projection (Linear + LayerNorm + tanh, as DrQ's actor trunk) lets the actor re-weight
    the detached features instead of reading the critic's representation as is.
    """

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        hidden_dim: int,
        feature_dim: int,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.proj = nn.Sequential(
            nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh()
        )
        self.trunk = mlp(feature_dim, hidden_dim, 2 * action_dim, num_hidden_layers=2)
        self.apply(orthogonal_init)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Return (mu, log_std) of the pre-tanh Gaussian, each (B, action_dim)."""
        mu, log_std = self.trunk(self.proj(h.detach())).chunk(2, dim=-1)
        # Squash smoothly into [min, max] instead of clamping, so log_std keeps a gradient.
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mu, log_std

    def sample(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action in (-1, 1) (B, A) and its log-probability (B,)."""
        mu, log_std = self(h)
        noise = torch.randn_like(mu)
        pre_tanh = mu + log_std.exp() * noise
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # Change of variables: log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), log_prob


class Critic(nn.Module):
    """Twin Q networks on (h, action); ``forward`` returns (q1, q2), each (B,)."""

    def __init__(self, repr_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.q1 = mlp(repr_dim + action_dim, hidden_dim, 1, num_hidden_layers=2)
        self.q2 = mlp(repr_dim + action_dim, hidden_dim, 1, num_hidden_layers=2)
        self.apply(orthogonal_init)

    def forward(self, h: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([h, action], dim=-1)  # (B, repr_dim + A)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
