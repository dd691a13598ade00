"""Small building blocks shared by the encoder, the pretraining heads and the agent."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int = 1) -> nn.Sequential:
    """Linear-ReLU stack with ``num_hidden_layers`` hidden layers of ``hidden_dim``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights and zero biases for convs and linears (DrQ / SAC convention)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        gain = nn.init.calculate_gain("relu") if isinstance(module, nn.Conv2d) else 1.0
        nn.init.orthogonal_(module.weight, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
