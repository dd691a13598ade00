"""Pretraining heads on top of a :class:`SemoreEncoder` (dropped after pretraining)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.augment import RandomShift
from semore.encoder import SemoreEncoder
from semore.layers import mlp, orthogonal_init
from semore.trunk_cache import encode_tokens


class SemorePretrainModel(nn.Module):
    """Encoder plus the heads its pretraining losses read.

    - ``sem_proj`` / ``mot_proj``: MLP projections into the text-embedding space,
      L2-normalised (for the InfoNCE alignment losses); only for enabled streams.
    - ``motion_pred``: ego-motion regression.
    - ``reward_pred``: reward regression from concat(h, action).

    ``heads_read="h"`` (default): the projections and the motion head read h, the fused
    representation RL uses, so every term shapes it (with ``"streams"`` they read z_sem /
    z_mot and only the reward head reaches h: its effective rank collapsed to ~3 of 50).
    """

    def __init__(
        self,
        encoder: SemoreEncoder,
        text_dim: int,
        motion_dim: int,
        action_dim: int,
        hidden_dim: int = 256,
        heads_read: str = "h",
        state_dim: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.text_dim = text_dim
        self.motion_dim = motion_dim
        self.action_dim = action_dim
        if heads_read not in ("h", "streams"):
            raise ValueError(f"heads_read={heads_read!r}; expected 'h' or 'streams'")
        self.heads_read = heads_read
        on_h = heads_read == "h"
        sem_in = encoder.repr_dim if on_h else encoder.sem_dim
        mot_in = encoder.repr_dim if on_h else encoder.mot_dim
        self.sem_proj = mlp(sem_in, hidden_dim, text_dim) if encoder.sem_dim else None
        self.mot_proj = mlp(mot_in, hidden_dim, text_dim) if encoder.mot_dim else None
        motion_in = encoder.mot_dim if encoder.mot_dim and not on_h else encoder.repr_dim
        self.motion_head = mlp(motion_in, hidden_dim, motion_dim)
        self.reward_head = mlp(encoder.repr_dim + action_dim, hidden_dim, 1, num_hidden_layers=2)
        # The no-language control: regress, from h, the state the captions are written from.
        self.state_head = mlp(encoder.repr_dim, hidden_dim, state_dim) if state_dim else None
        # Heads only: re-initialising here would overwrite a loaded encoder's weights.
        for head in (
            self.sem_proj,
            self.mot_proj,
            self.motion_head,
            self.reward_head,
            self.state_head,
        ):
            if head is not None:
                head.apply(orthogonal_init)

    def forward(self, obs: Tensor, action: Tensor) -> dict[str, Tensor]:
        return self.heads(self.encoder.encode(obs), action)

    def guide_outputs(self, batch: dict[str, Tensor], augment: RandomShift) -> dict[str, Tensor]:
        """The outputs on a guided fine-tuning batch (semore.guide.PretrainGuide): from its
        shifted frames ("obs"), or from a frozen trunk's cached tokens ("obs_tokens"),
        unshifted like the RL batches'."""
        action = batch["action"].float()
        if "obs_tokens" in batch:
            return self.heads(encode_tokens(self.encoder, batch["obs_tokens"]), action)
        return self(augment(batch["obs"].float()), action)

    def heads(self, out: dict[str, Tensor], action: Tensor) -> dict[str, Tensor]:
        """The head outputs added to the encoder's ``out`` ({"h", "z_sem"?, "z_mot"?}), from
        frames (:meth:`forward`) or from cached tokens (``semore.trunk_cache.encode_tokens``)."""
        out = dict(out)
        h = out["h"]  # (B, repr_dim)
        on_h = self.heads_read == "h"
        if self.sem_proj is not None:
            sem_in = h if on_h else out["z_sem"]
            out["sem_proj"] = F.normalize(self.sem_proj(sem_in), dim=-1)  # (B, text_dim)
        if self.mot_proj is not None:
            mot_in = h if on_h else out["z_mot"]
            out["mot_proj"] = F.normalize(self.mot_proj(mot_in), dim=-1)  # (B, text_dim)
        motion_in = out["z_mot"] if "z_mot" in out and not on_h else h
        out["motion_pred"] = self.motion_head(motion_in)  # (B, motion_dim)
        reward_in = torch.cat([h, action.to(h.dtype)], dim=-1)  # (B, repr_dim + action_dim)
        out["reward_pred"] = self.reward_head(reward_in).squeeze(-1)  # (B,)
        if self.state_head is not None:
            out["state_pred"] = self.state_head(h)  # (B, state_dim)
        return out
