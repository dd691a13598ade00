"""The pretraining LightningModule: a thin wrapper around the method's model and loss."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from semore.atc import ATCLoss, ATCModel
from semore.augment import RandomShift
from semore.encoder import EncoderConfig, SemoreEncoder
from semore.heads import SemorePretrainModel
from semore.losses import SemorePretrainLoss
from semore.probe import effective_rank


class SemorePretrainModule(L.LightningModule):
    """SemorePretrainModel + SemorePretrainLoss, with DrQ random shifts on training batches.

    Every loss term is logged on its own under ``train/`` (per step) and ``val/`` (per
    validation run). The motion and reward mean/std the datamodule standardised the targets
    with are hyper-parameters only (saved with every checkpoint; the export's metadata is
    where consumers read them): the batches arrive standardised.
    """

    def __init__(
        self,
        encoder_config: dict,
        text_dim: int,
        motion_dim: int,
        action_dim: int,
        motion_mean: list[float],
        motion_std: list[float],
        reward_mean: float = 0.0,
        reward_std: float = 1.0,
        sem_weight: float = 1.0,
        mot_weight: float = 1.0,
        motion_reg_weight: float = 1.0,
        reward_weight: float = 1.0,
        state_weight: float = 0.0,
        state_dim: int = 0,
        temperature: float = 0.07,
        heads_read: str = "h",
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        aug_pad: int = 4,
        objective: str = "semore",
        atc_temporal_shift: int = 1,
        atc_momentum_tau: float = 0.01,
        atc_hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = SemoreEncoder.from_config(EncoderConfig(**encoder_config))
        self.augment = RandomShift(aug_pad)
        if objective == "atc":  # the label-free baseline: no heads of the method's terms
            self.model = ATCModel(encoder, encoder.frame_stack, atc_temporal_shift, atc_hidden_dim)
            self.loss = ATCLoss()
            return
        self.model = SemorePretrainModel(
            encoder, text_dim, motion_dim, action_dim, heads_read=heads_read,
            state_dim=state_dim if state_weight > 0 else 0,
        )  # fmt: skip
        self.loss = SemorePretrainLoss(
            sem_weight, mot_weight, motion_reg_weight, reward_weight, temperature, state_weight
        )

    def on_fit_start(self) -> None:
        # Channels-last convolutions, as semore-finetune's: with bf16-mixed a pretraining
        # step on this CPU takes ~0.5x the float32 time (benchmarks/pretrain.py
        # --compare-precision); the weights' values are unchanged, only their layout.
        self.model.to(memory_format=torch.channels_last)

    @property
    def encoder(self) -> SemoreEncoder:
        return self.model.encoder

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the statistics left the state dict still hold them there.
        for legacy in ("motion_mean", "motion_std", "reward_stats"):
            checkpoint["state_dict"].pop(legacy, None)

    @property
    def is_atc(self) -> bool:
        return isinstance(self.model, ATCModel)

    def _outputs(self, batch: dict[str, Tensor], train: bool) -> dict[str, Tensor]:
        obs = batch["obs"]  # (B, 3K, H, W) uint8; (B, 3(K + shift), H, W) for ATC
        if self.is_atc:
            anchor, positive = self.model.split(obs)
            if train:  # independent shifts of anchor and positive, as in ATC
                anchor, positive = self.augment(anchor), self.augment(positive)
            return self.model(anchor, positive)
        if train:
            obs = self.augment(obs)  # float, same 0..255 range
        return self.model(obs, batch["action"])

    def _step(self, batch: dict[str, Tensor], prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of ``batch``, and the model's outputs on it."""
        outputs = self._outputs(batch, train=prefix == "train")
        terms = self.loss(outputs, batch)
        obs = batch["obs"]
        on_step = prefix == "train"
        log_kwargs = dict(
            on_step=on_step, on_epoch=not on_step, batch_size=obs.shape[0], sync_dist=not on_step
        )
        terms_only = {f"{prefix}/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        self.log_dict(terms_only, **log_kwargs)
        self.log(f"{prefix}/loss", terms["loss"].detach(), prog_bar=True, **log_kwargs)
        return terms["loss"], outputs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.is_atc:  # after the optimiser step: the momentum encoder follows
            self.model.update_target(self.hparams.atc_momentum_tau)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        _, outputs = self._step(batch, "val")
        # How many of h's dimensions carry information (rank collapse shows here first); h of
        # the unaugmented validation batch, from the same forward pass as the loss.
        h = outputs["h"]  # (B, repr_dim)
        self.log("val/h_effective_rank", effective_rank(h), on_epoch=True,
                 batch_size=h.shape[0], sync_dist=True)  # fmt: skip

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # No decay on biases, norms, gates and temperatures: decaying them only adds bias.
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
