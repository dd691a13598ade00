"""The schema of an encoder export (``save_encoder``'s payload), checked on every load.

An export may come from someone else: every part a reader uses is checked for its type and
range before a model is built from it, so a hand-edited or foreign file is a one-line error
naming the file, the field, the value and what was expected. Fields a newer writer adds are
allowed; the known ones are typed. The metadata fields are those ``semore-pretrain`` writes
(each optional, since exports written by hand or by older versions carry fewer).
"""

from __future__ import annotations

from typing import Any

import torch

from semore.checks import (
    AnyValue,
    CheckError,
    Float,
    Int,
    ListOf,
    MapOf,
    Opt,
    Record,
    Spec,
    Str,
)

# Generous upper ends for counts recorded in an export (a dataset's samples, steps, dims).
MAX_COUNT = 10**12
MAX_DIM = 1 << 20


class TensorValue(Spec):
    """A torch tensor (what ``torch.load(weights_only=True)`` gives for saved weights)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def describe(self) -> str:
        return "a tensor"


WEIGHTS = MapOf(TensorValue())

METADATA = Record(
    {
        "dataset": Record(
            {
                "path": Str(),
                "manifest_sha256": Opt(Str()),
                "content_sha256": Opt(Str()),
                "raw_config_hash": Opt(Str()),
                "ann_config_hash": Opt(Str()),
                "num_samples": Opt(Int(0, MAX_COUNT)),
            }
        ),
        "motion_targets": ListOf(ListOf(Str(), min_len=2, max_len=2)),
        "motion_mean": ListOf(Float()),
        "motion_std": ListOf(Float(0.0, low_open=True)),
        "reward_mean": Float(),
        "reward_std": Float(0.0, low_open=True),
        "state_mean": ListOf(Float()),
        "state_std": ListOf(Float(0.0, low_open=True)),
        "embedding_dim": Opt(Int(1, MAX_DIM)),
        "holdout_every": Int(0, MAX_COUNT),
        "heldout_episodes": ListOf(Int(0, MAX_COUNT)),
        "config": MapOf(AnyValue()),
        "command": Str(),
        "global_step": Int(0, MAX_COUNT),
    }
)

METHOD_HEADS = Record(
    {
        "model": Record(
            {
                "text_dim": Opt(Int(1, MAX_DIM)),
                "motion_dim": Int(0, MAX_DIM),
                "action_dim": Int(1, MAX_DIM),
                "heads_read": Str(choices=("h", "streams")),
                "state_dim": Int(0, MAX_DIM),
            },
            required=("text_dim", "motion_dim", "action_dim", "heads_read", "state_dim"),
        ),
        "loss": MapOf(Float()),
        "state_dict": WEIGHTS,
        "loss_state_dict": WEIGHTS,
    },
    required=("model", "loss", "state_dict", "loss_state_dict"),
)
# The label-free baseline's heads (semore.atc): predictor, contrast and momentum encoder.
ATC_HEADS = Record(
    {
        "objective": Str(choices=("atc",)),
        "model": Record(
            {
                "frame_stack": Int(1, MAX_DIM),
                "temporal_shift": Int(1, MAX_DIM),
                "hidden_dim": Int(1, MAX_DIM),
            },
            required=("frame_stack", "temporal_shift", "hidden_dim"),
        ),
        "momentum_tau": Float(0.0, 1.0, low_open=True),
        "state_dict": WEIGHTS,
    },
    required=("objective", "model", "momentum_tau", "state_dict"),
)


class _Heads(Spec):
    """The heads an export carries: ATC's when tagged ``objective: atc``, else the method's."""

    def check(self, value: Any, path: str = "value") -> None:
        atc = isinstance(value, dict) and value.get("objective") == "atc"
        (ATC_HEADS if atc else METHOD_HEADS).check(value, path)

    def describe(self) -> str:
        return "the method's or ATC's pretraining heads"


HEADS = _Heads()

PAYLOAD = Record(
    {
        "config": MapOf(AnyValue()),  # each field is checked by EncoderConfig itself
        "state_dict": WEIGHTS,
        "metadata": METADATA,
        "heads": HEADS,
    },
    required=("config", "state_dict"),
)


def check_payload(payload: dict[str, Any]) -> None:
    """Raise :class:`CheckError` (path from the payload's top) on the first field that is
    not what the schema expects, including the motion statistics' lengths agreeing."""
    PAYLOAD.check(payload, "export")
    metadata = payload.get("metadata") or {}
    sizes = {
        name: len(metadata[name])
        for name in ("motion_targets", "motion_mean", "motion_std")
        if name in metadata
    }
    if len(set(sizes.values())) > 1:
        raise CheckError(
            "export.metadata.motion_std",
            metadata.get("motion_std"),
            f"as many entries as motion_targets and motion_mean ({sizes})",
        )
