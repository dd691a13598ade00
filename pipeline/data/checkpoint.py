"""The ``semore-finetune`` checkpoint, as every reader sees it: ``RUN/checkpoints/last.pt``.

``semore-finetune`` writes it (and resumes from it); ``semore-probe`` reads the encoder RL left
in it, and ``benchmarks/drive_profile.py`` the whole agent. All of them read it through
:func:`read_checkpoint`, so a missing, corrupt, foreign or outdated file is the same one-line
error everywhere.

Its keys: ``format`` and ``format_version``, ``agent`` (the agent's state: ``agent["agent"]``
holds its module's weights, the encoder's under ``encoder.``), ``config`` (the resolved
fine-tune config), ``encoder_source`` (an export's path, or "none") and ``encoder_config``,
the counters and random states of the loop (``step`` ...) and the replay buffer's file name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from pipeline.errors import SemoreError
from semore.baselines import DrQv2Encoder, make_encoder
from semore.encoder import EncoderConfig, SemoreEncoder

FORMAT = "semore-finetune"
# 2: encoder regimes, no target encoder, replay features; 3: the open training episode and
# the update metrics since the last train row (evaluation no longer ends the episode).
FORMAT_VERSION = 3
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
# Where the encoder's weights sit in the agent's state dict.
ENCODER_PREFIX = "encoder."


def last_checkpoint(run: Path) -> Path:
    """A fine-tuning run folder's checkpoint: ``RUN/checkpoints/last.pt``."""
    return Path(run) / CHECKPOINT_DIR / LAST_CHECKPOINT


def read_checkpoint(path: Path) -> dict:
    """The ``semore-finetune`` checkpoint at ``path``; a one-line error when it is missing,
    unreadable, foreign or of another format version."""
    if not Path(path).is_file():
        raise SemoreError(
            f"{path} not found: expected a semore-finetune run's checkpoint "
            f"(RUN/{CHECKPOINT_DIR}/{LAST_CHECKPOINT})"
        )
    try:
        with warnings.catch_warnings():  # a foreign pickle makes torch warn before refusing
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files
        raise SemoreError(
            f"{path} is not readable ({type(err).__name__}): expected a checkpoint "
            "written by semore-finetune"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise SemoreError(f"{path} is not a semore-finetune checkpoint: expected {FORMAT!r}")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise SemoreError(
            f"{path} has format_version {checkpoint.get('format_version')!r}: expected "
            f"{FORMAT_VERSION}"
        )
    return checkpoint


def checkpoint_encoder(checkpoint: dict) -> SemoreEncoder | DrQv2Encoder:
    """The encoder of a checkpoint (:func:`read_checkpoint`), as RL left it. Runs written
    before the strided trunk record no ``trunk``: they ran the DrQ trunk."""
    config = {"trunk": "drq", **checkpoint["encoder_config"]}
    encoder = make_encoder(EncoderConfig(**config))
    weights, cut = checkpoint["agent"]["agent"], len(ENCODER_PREFIX)
    encoder.load_state_dict(
        {k[cut:]: v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}
    )
    return encoder
