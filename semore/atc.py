"""ATC, the label-free pretraining baseline: Augmented Temporal Contrast (Stooke et al. 2021,
"Decoupling Representation Learning from Reinforcement Learning").

An anchor frame stack and the stack ``temporal_shift`` steps later in the same episode are
each randomly shifted; the anchor is encoded by the online encoder and the positive by a
momentum (EMA) copy of it; a residual MLP predictor and a bilinear contrast matrix score every
anchor against every positive of the batch, and InfoNCE asks each anchor to pick its own
future. No captions, no state: only the frames Semore is pretrained on. The contrast reads h,
the representation the agent reads, as Semore's alignment heads do, so the two objectives
shape the same features of the same architecture.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.augment import RandomShift
from semore.layers import mlp, orthogonal_init
from semore.trunk_cache import encode_tokens


class ATCModel(nn.Module):
    """Online encoder, its momentum copy, the residual predictor and the contrast matrix.

    ``encoder`` maps (B, 3K, H, W) frames to h (B, repr_dim). Frames arrive as one stack of
    K + ``temporal_shift`` frames (oldest first): the anchor is the first K, the positive the
    last K.
    """

    def __init__(
        self, encoder: nn.Module, frame_stack: int, temporal_shift: int, hidden_dim: int = 512
    ) -> None:
        super().__init__()
        if frame_stack < 1 or temporal_shift < 1 or hidden_dim < 1:
            raise ValueError(
                f"ATCModel frame_stack={frame_stack}, temporal_shift={temporal_shift}, "
                f"hidden_dim={hidden_dim}; expected ints >= 1"
            )
        self.encoder = encoder
        self.frame_stack = frame_stack
        self.temporal_shift = temporal_shift
        # The momentum encoder only follows the online one (update_target); never trained.
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        repr_dim = encoder.repr_dim
        self.predictor = mlp(repr_dim, hidden_dim, repr_dim)  # ATC's residual "anchor MLP"
        self.contrast = nn.Linear(repr_dim, repr_dim, bias=False)  # W of anchor^T W positive
        for head in (self.predictor, self.contrast):
            head.apply(orthogonal_init)

    def split(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(anchor, positive) stacks (B, 3K, H, W) of a (B, 3(K + shift), H, W) window."""
        expected = 3 * (self.frame_stack + self.temporal_shift)
        if frames.dim() != 4 or frames.shape[1] != expected:
            raise ValueError(
                f"ATCModel frames of shape {tuple(frames.shape)}; expected (B, {expected}, H, W): "
                f"{self.frame_stack} frames and {self.temporal_shift} later ones"
            )
        shift = 3 * self.temporal_shift
        return frames[:, : 3 * self.frame_stack], frames[:, shift:]

    def forward(self, anchor: Tensor, positive: Tensor) -> dict[str, Tensor]:
        """{"h": the anchors' h (B, repr_dim), "logits": (B, B) anchor-by-positive scores}."""
        h = self.encoder(anchor)
        with torch.no_grad():
            target = self.target_encoder(positive)  # (B, repr_dim), no gradient (momentum)
        return self.score(h, target)

    def score(self, h: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Anchors' h (B, repr_dim) against the momentum encoder's h of the positives."""
        predicted = h + self.predictor(h)  # residual, as ATC's anchor MLP
        logits = predicted @ self.contrast(target).t()  # (B, B)
        return {"h": h, "logits": logits - logits.max(dim=1, keepdim=True).values.detach()}

    def guide_outputs(self, batch: dict[str, Tensor], augment: RandomShift) -> dict[str, Tensor]:
        """The outputs on a guided fine-tuning batch (semore.guide.PretrainGuide): frames of
        K + shift frames ("obs"), shifted independently as in pretraining; or, below a frozen
        cache point, the anchors' tokens of the online encoder ("obs_tokens") and the
        positives' tokens of the momentum encoder ("pos_tokens"), unshifted like every cached
        batch."""
        if "obs_tokens" in batch:
            h = encode_tokens(self.encoder, batch["obs_tokens"])["h"]
            with torch.no_grad():
                target = encode_tokens(self.target_encoder, batch["pos_tokens"])["h"]
            return self.score(h, target)
        anchor, positive = self.split(batch["obs"].float())
        return self(augment(anchor), augment(positive))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- (1 - tau) target + tau online (ATC: tau 0.01 every update), for the
        online layers that train: below a frozen cache point both copies stay as they are, so
        the momentum encoder's cached tokens stay valid. Buffers are copied."""
        pairs = zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True)
        for target, online in pairs:
            if online.requires_grad:
                target.lerp_(online.detach(), tau)
        buffers = zip(self.target_encoder.buffers(), self.encoder.buffers(), strict=True)
        for target, online in buffers:
            target.copy_(online)


class ATCLoss(nn.Module):
    """InfoNCE over the batch: row i's positive is column i; returns named terms."""

    def forward(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        logits = outputs["logits"]  # (B, B)
        labels = torch.arange(logits.shape[0], device=logits.device)
        nce = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"atc_nce": nce, "atc_accuracy": accuracy.detach(), "loss": nce}
