"""Typed config of stage 3a (``semore-pretrain``): data, encoder, losses, optimiser, trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import resumable
from pipeline.data import schema
from semore.checks import (
    MAX_AUG_PAD,
    MAX_BATCH,
    MAX_BUFFER,
    MAX_LR,
    MAX_PROCESSES,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    MAX_WIDTH,
    Either,
    Float,
    Int,
    Str,
    check_fields,
)
from semore.encoder import MAX_FRAME_STACK, EncoderArch


@dataclass
class DataConfig:
    """How pretraining reads a dataset."""

    # 64 fits a CPU step in well under a second at 84x84 and gives InfoNCE 63 negatives.
    batch_size: int = 64
    # DrQ's 3 frames: enough for the motion stream to see speed and acceleration.
    frame_stack: int = 3
    # Loader processes per rank; 2 keep up with a CPU training step (see benchmarks/pretrain.py).
    num_workers: int = resumable(default=2)
    # Samples held for shuffling after windowing; ~2 shards of 4 x 100-step episodes, so
    # batches mix episodes and shards while the buffer stays ~60 MB of 84x84 frames.
    shuffle_buffer: int = 1000
    # Every 4th episode (3, 7, ...) is held out for validation and for the linear probe.
    holdout_every: int = 4

    def __post_init__(self) -> None:
        check_fields(
            self,
            batch_size=Int(1, MAX_BATCH),
            frame_stack=Int(1, MAX_FRAME_STACK),
            num_workers=Int(0, MAX_PROCESSES),
            shuffle_buffer=Int(1, MAX_BUFFER),
            holdout_every=Int(0, schema.MAX_EPISODES),
        )
        if self.holdout_every == 1:
            raise ValueError(
                f"data.holdout_every is {self.holdout_every}: expected 0 (no held-out "
                "episodes) or an int >= 2"
            )


@dataclass
class LossSection:
    """Loss weights (0 turns a term off, which is how the loss ablations run)."""

    # Equal weights: every term is O(1) at initialisation (motion targets are standardised).
    sem_weight: float = 1.0
    mot_weight: float = 1.0
    motion_reg_weight: float = 1.0
    reward_weight: float = 1.0
    # The no-language control (0 = off): regress from h the state the scene captions are
    # written from (schema.CAPTION_STATE_FIELDS); with sem_weight and mot_weight 0 it asks
    # whether language adds anything over the numbers behind it.
    state_weight: float = 0.0
    # CLIP's initial temperature; it is learned from there.
    temperature: float = 0.07
    # What the alignment projections and the motion head read: "h", the fused representation
    # RL uses, so every term shapes the features the agent reads; "streams" (z_sem / z_mot, the paper's
    # wiring) left h shaped by the reward head alone, effective rank 3.5 of 50.
    heads_read: Literal["h", "streams"] = "h"

    def __post_init__(self) -> None:
        weight = Float(0.0, MAX_WEIGHT)
        check_fields(
            self,
            sem_weight=weight,
            mot_weight=weight,
            motion_reg_weight=weight,
            reward_weight=weight,
            state_weight=weight,
            temperature=Float(0.0, MAX_WEIGHT, low_open=True),
        )


@dataclass
class OptimSection:
    # Adam at 3e-4, the usual rate for DrQ-size conv encoders trained from scratch.
    lr: float = 3e-4
    # Light AdamW decay on weight matrices only; a regulariser, not a tuning knob.
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        check_fields(
            self, lr=Float(0.0, MAX_LR, low_open=True), weight_decay=Float(0.0, MAX_WEIGHT)
        )


@dataclass
class TrainerSection:
    """Lightning Trainer settings."""

    # Optimiser steps in total; --resume continues up to this number.
    max_steps: int = 2000
    # Validate every this many training steps (across epoch boundaries).
    val_check_interval: int = 200
    # At most this many validation batches (a fraction is of the held-out set).
    limit_val_batches: int | float = 1.0
    # Save a checkpoint (and last.ckpt) every this many steps: what a crash can lose.
    checkpoint_every_n_steps: int = 200
    log_every_n_steps: int = 10
    # "bf16-mixed" on GPUs; full precision on CPU, where bf16 is slower.
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    # Nodes for DDP; with torchrun / SLURM Lightning reads ranks from the environment.
    num_nodes: int = 1
    strategy: str = "auto"

    def __post_init__(self) -> None:
        steps = Int(1, MAX_STEPS)
        check_fields(
            self,
            max_steps=steps,
            val_check_interval=steps,
            # Lightning: an int counts batches (0: none), a float is a fraction of them.
            limit_val_batches=Either((Int(0, MAX_STEPS), Float(0.0, 1.0))),
            checkpoint_every_n_steps=steps,
            log_every_n_steps=steps,
            devices=Either((Int(-1, MAX_PROCESSES), Str())),  # -1: every GPU
            num_nodes=Int(1, MAX_PROCESSES),
        )


@dataclass
class ATCSection:
    """The label-free baseline's settings (objective atc; semore.atc), ATC's DMControl values."""

    # The positive is the frame stack this many agent steps after the anchor (ATC: k=1 on
    # DMControl, whose frame-stacked 84 px control task is the closest to ours).
    temporal_shift: int = 1
    # The momentum encoder moves this far towards the online one after every step (ATC: 0.01).
    momentum_tau: float = 0.01
    # Width of the residual predictor on the anchor's h (ATC's anchor MLP: 512).
    hidden_dim: int = 512

    def __post_init__(self) -> None:
        check_fields(
            self,
            temporal_shift=Int(1, 100),  # agent steps; an episode is ~100 on highway
            momentum_tau=Float(0.0, 1.0, low_open=True),
            hidden_dim=Int(1, MAX_WIDTH),
        )


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderArch = field(default_factory=EncoderArch)
    # "semore": the method's terms (`loss`: caption alignment, motion, reward, state);
    # "atc": the label-free baseline on the same frames (`atc`; `loss` is not used).
    objective: Literal["semore", "atc"] = "semore"
    loss: LossSection = field(default_factory=LossSection)
    atc: ATCSection = field(default_factory=ATCSection)
    optim: OptimSection = field(default_factory=OptimSection)
    # How long and where to train: a --resume may change it (e.g. more steps, a GPU).
    trainer: TrainerSection = resumable(default_factory=TrainerSection)
    # DrQ's 4-pixel random shift for 84 px frames; 0 turns augmentation off.
    aug_pad: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, aug_pad=Int(0, MAX_AUG_PAD), seed=Int(0, MAX_SEED))
