"""What captioners see and return, and the device/dtype choice shared by the model backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

# Caption flags written to ann.json: an empty answer, or one cut off at the token budget.
FLAG_EMPTY = "empty"
FLAG_TRUNCATED = "truncated"


@dataclass(frozen=True)
class Step:
    """One step to caption: the current and an earlier sample of the same episode.

    ``prev_*`` is the sample ``motion_gap_steps`` earlier, clipped at the episode start
    (so at the first step it is the current sample itself). Frames are (H, W, 3) uint8,
    or None when the captioner needs no pixels.
    """

    key: str
    state: dict
    prev_state: dict
    frame: np.ndarray | None = None
    prev_frame: np.ndarray | None = None


class Caption(NamedTuple):
    """Semantic and motion caption of one step, with a flag per caption (None when fine)."""

    semantic: str
    motion: str
    sem_flag: str | None = None
    mot_flag: str | None = None


class Captioner(Protocol):
    """Turns a batch of steps into one (semantic, motion) caption pair per step."""

    # Stable identifier recorded in the manifest (e.g. "scene-v1", "vlm:Qwen/Qwen2-VL-2B-Instruct").
    id: str
    # Whether steps need decoded frames; the scene captioner only reads states.
    needs_frames: bool
    # Prompt name -> sha256 of its text ({} when the captioner uses no prompts).
    prompt_hashes: dict[str, str]
    # Answers generated a second time (empty or truncated at first), since construction.
    num_retried: int

    def caption(self, steps: list[Step]) -> list[Caption]: ...


def best_device(requested: str = "auto") -> str:
    """``requested`` unless it is "auto": then cuda > mps > cpu."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def torch_dtype(name: str, device: str):
    """The torch dtype for a config name; "auto" is bfloat16 on CUDA, else float32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
