"""Pretraining losses: multi-positive InfoNCE alignment, motion and reward regression."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows whose text embeddings have cosine >= 1 - this are the same caption.
SAME_CAPTION_TOLERANCE = 1e-6
# CLIP caps its logit scale at 100 so a learned temperature cannot collapse to 0.
MAX_LOGIT_SCALE = 100.0


def positives_mask(text_emb: Tensor) -> Tensor:
    """(B, B) bool mask of rows that share a caption (identical unit-norm embeddings)."""
    # float32 outside autocast: in bf16 two copies of one caption score well below 1 - 1e-6.
    with torch.autocast(device_type=text_emb.device.type, enabled=False):
        unit_text = F.normalize(text_emb.float(), dim=-1)
        cosine = unit_text @ unit_text.T  # (B, B)
    return cosine >= 1.0 - SAME_CAPTION_TOLERANCE


def soft_target_kl(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of KL(targets || softmax(logits)).

    Same gradient as soft-target cross-entropy, but 0 at the optimum whatever the number
    of positives per row, so the logged value is comparable between batches.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    cross_entropy = -(targets * log_probs).sum(-1)
    target_entropy = -(targets * torch.log(targets.clamp_min(1e-12))).sum(-1)
    return (cross_entropy - target_entropy).mean()


class MultiPositiveInfoNCE(nn.Module):
    """Symmetric InfoNCE where every identical caption in the batch is a positive.

    Captions repeat a lot in driving ("empty road ahead"); treating the other copies as
    negatives would push apart images that the labels say are alike. Targets are uniform
    over each row's positives, in both directions (image->text and text->image).
    Inputs are unit-norm (B, D). Returns {"loss", "acc"}; ``acc`` is the fraction of
    image->text rows whose argmax is a positive.
    """

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MultiPositiveInfoNCE temperature={temperature}; expected > 0")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @property
    def temperature(self) -> float:
        return 1.0 / self.logit_scale().item()

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> dict[str, Tensor]:
        if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
            raise ValueError(
                f"InfoNCE got image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)}; "
                "expected two (B, D) tensors of the same shape"
            )
        text_emb = text_emb.to(image_emb.dtype)
        positives = positives_mask(text_emb.detach())  # (B, B), symmetric
        targets = positives.to(image_emb.dtype)
        targets = targets / targets.sum(-1, keepdim=True)
        logits = self.logit_scale() * image_emb @ text_emb.T  # (B_image, B_text)
        # The mask is symmetric, so the text->image targets are the same matrix.
        loss = 0.5 * (soft_target_kl(logits, targets) + soft_target_kl(logits.T, targets))
        with torch.no_grad():
            hit = positives.gather(1, logits.argmax(-1, keepdim=True)).float()
            acc = hit.mean()
        return {"loss": loss, "acc": acc}


class SemorePretrainLoss(nn.Module):
    """Weighted sum of the pretraining terms; every term is also returned on its own.

    Terms (each skipped when its weight is 0 or its model output is missing, which is how
    the stream ablations drop them): "sem_nce", "mot_nce", "motion_reg" (MSE on the
    standardised motion targets), "reward_mse", "state_reg" (MSE on the standardised state
    the captions are written from: the no-language control). "sem_acc" / "mot_acc" are detached
    diagnostics, not part of "loss".
    """

    def __init__(
        self,
        sem_weight: float = 1.0,
        mot_weight: float = 1.0,
        motion_reg_weight: float = 1.0,
        reward_weight: float = 1.0,
        temperature: float = 0.07,
        state_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "sem_nce": float(sem_weight),
            "mot_nce": float(mot_weight),
            "motion_reg": float(motion_reg_weight),
            "reward_mse": float(reward_weight),
            "state_reg": float(state_weight),
        }
        for name, weight in self.weights.items():
            if weight < 0:
                raise ValueError(f"SemorePretrainLoss weight for {name} is {weight}; expected >= 0")
        # Separate temperatures: the two caption sets have different duplicate rates.
        self.sem_nce = MultiPositiveInfoNCE(temperature)
        self.mot_nce = MultiPositiveInfoNCE(temperature)

    @staticmethod
    def _target(batch: dict[str, Tensor], key: str, term: str) -> Tensor:
        if key not in batch:
            raise ValueError(f"pretraining batch lacks {key!r}, needed by the {term} loss term")
        return batch[key]

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        for term, proj_key, emb_key, acc_key, nce in (
            ("sem_nce", "sem_proj", "emb_sem", "sem_acc", self.sem_nce),
            ("mot_nce", "mot_proj", "emb_mot", "mot_acc", self.mot_nce),
        ):
            if self.weights[term] > 0 and proj_key in outputs:
                result = nce(outputs[proj_key], self._target(batch, emb_key, term))
                terms[term] = result["loss"]
                metrics[acc_key] = result["acc"].detach()
        if self.weights["motion_reg"] > 0 and "motion_pred" in outputs:
            motion = self._target(batch, "motion", "motion_reg")
            pred = outputs["motion_pred"]
            terms["motion_reg"] = F.mse_loss(pred, motion.to(pred.dtype))
        if self.weights["reward_mse"] > 0 and "reward_pred" in outputs:
            reward = self._target(batch, "reward", "reward_mse")
            pred = outputs["reward_pred"]
            terms["reward_mse"] = F.mse_loss(pred, reward.reshape(pred.shape).to(pred.dtype))
        if self.weights["state_reg"] > 0 and "state_pred" in outputs:
            state = self._target(batch, "caption_state", "state_reg")
            pred = outputs["state_pred"]
            terms["state_reg"] = F.mse_loss(pred, state.to(pred.dtype))
        if not terms:
            raise ValueError(
                "SemorePretrainLoss has no active term; expected at least one non-zero weight "
                f"whose output is present (outputs: {sorted(outputs)})"
            )
        total = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms, **metrics}
