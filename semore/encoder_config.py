"""The encoder's configuration: its architecture (:class:`EncoderArch`, what pretraining and
fine-tuning configs hold) and its full config with the input geometry (:class:`EncoderConfig`,
what exports store), with the ranges every field is checked against."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from semore.checks import Int, check_fields

STREAMS = ("semantic", "motion", "both")
TRUNKS = ("strided", "strided4", "drq")
KINDS = ("semore", "drqv2")
# Width of each stream's pooled feature (z_sem, z_mot): large enough for the 512-d CLIP
# projection heads to read from, small next to the flattened token grid (<= max_tokens * 32).
STREAM_DIM = 256
# Cross-attention cost is quadratic in tokens; 64 keeps it negligible next to the convs.
MAX_TOKENS = 64
# Smallest frame side each trunk maps to at least one cell (see trunk_output_size).
MIN_IMAGE_SIZE = {"drq": 16, "strided4": 19, "strided": 31}
# Each trunk's four 3x3 convs' strides (no padding).
TRUNK_STRIDES = {"drq": (2, 1, 1, 1), "strided4": (2, 2, 1, 1), "strided": (2, 2, 2, 1)}
# Upper ends of the architecture's sizes: far above any setting in use (32 filters, 50 dims,
# 4 heads, 64 tokens, 3 frames, 84x420 panoramas), low enough that a typo such as 10**29
# is refused here instead of asking torch for an impossible tensor.
MAX_FILTERS = 1024
MAX_REPR_DIM = 4096
MAX_HEADS = 64
MAX_TOKEN_CAP = 4096
MAX_FRAME_STACK = 16
MAX_IMAGE_SIZE = 4096


def _check(cfg: object, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r}; expected {expected}")


@dataclass(kw_only=True)
class EncoderArch:
    """The encoder's architecture without its input geometry: the one definition of its fields.

    Pretraining and fine-tuning configs hold this section; the frame stack and image size come
    from the dataset or the simulator, so they are never configured twice.
    """

    # "semore" is the method; "drqv2" is DrQ-v2's own encoder, the end-to-end baseline
    # (semore.baselines; the fields from `trunk` to `max_tokens` below do not apply to it).
    kind: Literal["semore", "drqv2"] = "semore"
    # Which conv trunk each stream runs. "drq" (DrQ's: stride 2, then three stride-1 convs at
    # 35x35 for 84 px frames, pooled to the 8x8 token grid) is the default. "strided4" (strides
    # 2, 2, 1, 1: a 16x16 map pooled 2x2) and "strided" (ATC's strides 2, 2, 2, 1: the 7x7 grid
    # directly) make end-to-end updates ~2-3x cheaper, but on tuning seeds 102-105 the guided
    # arm scored 0.33 with either at 3000 steps against 0.53 with "drq", and "strided" probed
    # worse (speed R2 0.75 against 0.90; benchmarks/results/tune_trunk/), so neither was
    # adopted.
    trunk: Literal["drq", "strided4", "strided"] = "drq"
    # Trunk width (DrQ's and ATC's 32); enough for 84 px inputs and cheap on CPU.
    num_filters: int = 32
    # 50 dims as in the SAC-AE / DrQ family, so agent heads are comparable.
    repr_dim: int = 50
    # "both" is the method; "semantic" / "motion" are the single-stream ablations.
    streams: Literal["semantic", "motion", "both"] = "both"
    # The cross-stream exchange is part of the method; False is the no-interaction ablation.
    interaction: bool = True
    # 4 heads of 8 dims over 32 filters: small heads suit the tiny token grid.
    num_heads: int = 4
    # Cap on the token grid: the drq trunk's 35x35 map of an 84 px frame is average-pooled to
    # 8x8 (64); the strided trunk's 7x7 map fits as it is. A 12x12 grid (144) probed no better:
    # lateral-offset R2 0.67 [0.61, 0.71] against 0.75 [0.70, 0.79] at 8x8
    # (benchmarks/results/pooling/).
    max_tokens: int = MAX_TOKENS

    def __post_init__(self) -> None:
        _check(self, "kind", self.kind in KINDS, f"one of {list(KINDS)}")
        _check(self, "trunk", self.trunk in TRUNKS, f"one of {list(TRUNKS)}")
        check_fields(
            self,
            num_filters=Int(1, MAX_FILTERS),
            repr_dim=Int(1, MAX_REPR_DIM),
            num_heads=Int(1, MAX_HEADS),
            max_tokens=Int(1, MAX_TOKEN_CAP),
        )
        _check(self, "streams", self.streams in STREAMS, f"one of {list(STREAMS)}")
        _check(self, "interaction", isinstance(self.interaction, bool), "a bool")
        _check(
            self,
            "num_heads",
            self.num_filters % self.num_heads == 0,
            f"an int >= 1 that divides num_filters={self.num_filters}",
        )

    @property
    def trunk_run(self) -> str:
        """The trunk this architecture really runs (DrQ-v2 always runs its own, "drq")."""
        return "drq" if self.kind == "drqv2" else self.trunk

    def to_config(self, frame_stack: int, image_height: int, image_width: int) -> EncoderConfig:
        """The full config for inputs of ``frame_stack`` frames of ``image_height x image_width``."""
        return EncoderConfig(frame_stack, image_height, image_width, **asdict(self))

    @classmethod
    def of(cls, config: EncoderConfig) -> EncoderArch:
        """The architecture part of a full config (e.g. an export's)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(EncoderArch)})


@dataclass
class EncoderConfig(EncoderArch):
    """Everything needed to rebuild a :class:`SemoreEncoder` exactly (stored in exports): the
    input geometry, then the :class:`EncoderArch` fields (keyword-only)."""

    # 3 frames let the motion stream see velocity and acceleration (DrQ default).
    frame_stack: int = 3
    # 84 px per camera as in DrQ / the DBC CARLA task; panoramas are 84x420.
    image_height: int = 84
    image_width: int = 84

    def __post_init__(self) -> None:
        size = Int(min(MIN_IMAGE_SIZE.values()), MAX_IMAGE_SIZE)
        check_fields(self, frame_stack=Int(1, MAX_FRAME_STACK), image_height=size, image_width=size)
        super().__post_init__()
        minimum = MIN_IMAGE_SIZE[self.trunk_run]
        for name in ("image_height", "image_width"):
            ok = getattr(self, name) >= minimum
            _check(self, name, ok, f"an int >= {minimum} for the {self.trunk_run} trunk")
