"""The guided regime's model and loss, rebuilt from an encoder export's pretraining heads.

The method's export carries its alignment, motion, reward (and, for the no-language control,
state) heads with their loss settings; ATC's export carries its predictor, contrast matrix and
momentum encoder. Either is rebuilt around the agent's own encoder, checked against the guide
dataset, with a one-line error naming what does not fit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.data.source import DatasetInfo
from pipeline.errors import SemoreError
from semore.atc import ATCLoss, ATCModel
from semore.encoder import SemoreEncoder, load_pretrain_heads
from semore.heads import SemorePretrainModel
from semore.losses import SemorePretrainLoss

if TYPE_CHECKING:
    from pipeline.finetune.config import FinetuneConfig

log = logging.getLogger(__name__)


# What identifies a dataset's content in an export made before ``content_sha256`` existed
# (its ``manifest_sha256`` also covers the command and git revision that made the data).
_OLD_IDENTITY = ("raw_config_hash", "ann_config_hash", "num_samples")


def dataset_change(recorded: dict, now: dict) -> str | None:
    """What differs between the dataset an export records and ``now`` (None when nothing does
    or the export records nothing): the content hash, or for older exports the configs and
    sample count."""
    keys = ("content_sha256",) if recorded.get("content_sha256") else _OLD_IDENTITY
    differ = [k for k in keys if recorded.get(k) is not None and recorded[k] != now.get(k)]
    return f"{', '.join(differ)} differs" if differ else None


def pretraining_model(
    encoder: nn.Module,
    cfg: FinetuneConfig,
    info: DatasetInfo,
    data: str,
    export: Path | None,
    metadata: dict,
    device: torch.device,
) -> tuple[SemorePretrainModel | ATCModel, SemorePretrainLoss | ATCLoss, float | None]:
    """The pretraining model around ``encoder`` with the export's heads and loss (fresh ones
    without), checked against the guide dataset ``data`` (read as ``info``), and an ATC
    model's momentum rate (None for the method's)."""
    saved = load_pretrain_heads(export) if export is not None else None
    if saved is None:
        log.warning("guided: %s has no pretraining heads; they start fresh", export or "none")
    changed = dataset_change(metadata.get("dataset", {}), info.dataset_id())
    if changed:
        log.warning(
            "guide dataset %s is not the one the encoder was pretrained on (%s)", data, changed
        )
    if saved is not None and saved.get("objective") == "atc":
        model = _atc_model(encoder, cfg, info, saved, export).to(device)
        return model, ATCLoss(), float(saved["momentum_tau"])
    spec = _heads_spec(info, saved)
    _check_dataset(info, str(data), encoder, spec)
    model = SemorePretrainModel(encoder, **spec).to(device)
    loss_kwargs = dict(saved["loss"]) if saved is not None else {}
    if "state_std" not in metadata:  # the state term needs the state targets' scaling
        loss_kwargs["state_weight"] = 0.0
    loss = SemorePretrainLoss(**loss_kwargs).to(device)
    if saved is not None:
        _load_heads(
            model, saved["state_dict"], export, loss=loss, loss_state_dict=saved["loss_state_dict"]
        )
    return model, loss, None


def _atc_model(
    encoder: nn.Module, cfg: FinetuneConfig, info: DatasetInfo, saved: dict, export: Path
) -> ATCModel:
    """ATC's predictor, contrast and momentum encoder from the export, around the agent's
    encoder (its momentum copy starts as exported, not as a copy of the online encoder)."""
    spec = saved["model"]
    if cfg.guide.replay_every:
        raise SemoreError(
            f"{export} was pretrained with ATC: expected guide.replay_every 0 (replayed frames "
            "are captioned for the method's terms; ATC's guide reads dataset windows only)"
        )
    if spec["frame_stack"] != cfg.frame_stack:
        raise SemoreError(
            f"{export} contrasts stacks of {spec['frame_stack']} frames: expected frame_stack "
            f"{spec['frame_stack']}"
        )
    enc = encoder.config
    if (info.image_height, info.image_width) != (enc.image_height, enc.image_width):
        raise SemoreError(
            f"guide dataset has {info.image_height}x{info.image_width} frames: expected "
            f"{enc.image_height}x{enc.image_width}, as the encoder"
        )
    model = ATCModel(encoder, spec["frame_stack"], spec["temporal_shift"], spec["hidden_dim"])
    _load_heads(model, saved["state_dict"], export, "ATC heads", "semore-pretrain --objective atc")
    return model


def _check_dataset(info: DatasetInfo, where: str, encoder: SemoreEncoder, heads: dict) -> None:
    """One-line error when the guide dataset cannot feed this encoder and these heads."""
    cfg = encoder.config
    wanted = {
        "image size": ((info.image_height, info.image_width), (cfg.image_height, cfg.image_width)),
        "embedding dim": (info.embedding_dim, heads["text_dim"]),
        "motion targets": (len(info.motion_targets), heads["motion_dim"]),
        "action dim": (info.action_dim, heads["action_dim"]),
    }
    for name, (found, expected) in wanted.items():
        if found != expected:
            raise SemoreError(
                f"guide dataset {where} has {name} {found}: expected {expected}, as the "
                "encoder and its pretraining heads (guide.data names another dataset)"
            )


def _heads_spec(info: DatasetInfo, saved: dict | None) -> dict:
    if saved is not None:
        return saved["model"]
    return {
        "text_dim": info.embedding_dim,
        "motion_dim": len(info.motion_targets),
        "action_dim": info.action_dim,
        "heads_read": "h",
        "state_dim": 0,
    }


def _load_heads(
    model: nn.Module,
    state_dict: dict,
    export: Path,
    heads: str = "pretraining heads",
    writer: str = "semore-pretrain",
    loss: nn.Module | None = None,
    loss_state_dict: dict | None = None,
) -> None:
    """The export's ``heads`` (and the loss's state) into ``model``, whose encoder is the
    agent's, already loaded; a one-line error naming what does not fit."""
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if loss is not None:
            loss.load_state_dict(loss_state_dict)
    except RuntimeError as err:
        raise SemoreError(
            f"{export}: its {heads} do not fit its encoder ({str(err).splitlines()[-1]}): "
            f"expected an export written by {writer}"
        ) from None
    lacking = sorted(key for key in missing if not key.startswith("encoder."))
    if unexpected or lacking:
        raise SemoreError(
            f"{export}: {heads} lack {lacking} / have extra {sorted(unexpected)}: expected an "
            f"export written by {writer}"
        )
