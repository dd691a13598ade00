"""Semore: dual-stream (semantic + motion) image encoder for visual RL, language-supervised.

The method only: models, losses, augmentation and probes in pure torch. No I/O formats,
simulators, VLMs or training loops live here (those are in ``pipeline/``).
"""

from semore.augment import RandomShift
from semore.encoder import (
    EncoderConfig,
    SemoreEncoder,
    load_encoder,
    load_encoder_metadata,
    save_encoder,
)
from semore.heads import SemorePretrainModel
from semore.losses import MultiPositiveInfoNCE, SemorePretrainLoss
from semore.probe import RidgeProbe, r2_score

__all__ = [
    "EncoderConfig",
    "MultiPositiveInfoNCE",
    "RandomShift",
    "RidgeProbe",
    "SemoreEncoder",
    "SemorePretrainLoss",
    "SemorePretrainModel",
    "load_encoder",
    "load_encoder_metadata",
    "r2_score",
    "save_encoder",
]
