"""The ``vlm`` captioner: a Hugging Face image-text-to-text model through ``transformers``.

The semantic prompt sees the current frame; the motion prompt sees the earlier and the
current frame. Generation is batched (left padding) and greedy, so the same inputs give
the same captions. An answer that is empty or hits the token budget without an end token
is generated once more with a larger budget, then flagged ("empty"/"truncated").
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from pipeline.annotate.base import (
    FLAG_EMPTY,
    FLAG_TRUNCATED,
    Caption,
    Step,
    best_device,
    torch_dtype,
)
from pipeline.annotate.config import VLMConfig
from pipeline.errors import SemoreError

log = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


def load_prompt(name: str) -> tuple[str, str]:
    """(text, sha256 of the text) of a shipped prompt name or a path to a .txt file."""
    path = Path(name) if name.endswith(".txt") else PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise SemoreError(
            f"prompt {name!r} not found ({path}): expected one of {shipped} or a .txt path"
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise SemoreError(f"prompt file {path} is empty: expected the instruction text")
    return text, hashlib.sha256(text.encode()).hexdigest()


class VLMCaptioner:
    """Captions from frames with ``AutoProcessor`` + ``AutoModelForImageTextToText``."""

    needs_frames = True

    def __init__(self, cfg: VLMConfig, device: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.id = f"vlm:{cfg.model}"
        self.device = best_device(device)
        dtype = torch_dtype(cfg.dtype, self.device)
        self.sem_prompt, sem_hash = load_prompt(cfg.semantic_prompt)
        self.mot_prompt, mot_hash = load_prompt(cfg.motion_prompt)
        self.prompt_hashes = {cfg.semantic_prompt: sem_hash, cfg.motion_prompt: mot_hash}
        try:
            self.processor = AutoProcessor.from_pretrained(cfg.model, **cfg.processor_kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SemoreError(
                f"cannot load VLM {cfg.model!r} ({reason}): expected a local folder saved with "
                "save_pretrained or a hub id (in the local cache when offline)"
            ) from None
        self.model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues at the right end of every row
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos_token_ids = {int(t) for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.num_retried = 0
        self._torch = torch
        log.info("VLM %s on %s (%s)", cfg.model, self.device, dtype)

    def caption(self, steps: list[Step]) -> list[Caption]:
        requests = [([s.frame], self.sem_prompt) for s in steps]
        requests += [([s.prev_frame, s.frame], self.mot_prompt) for s in steps]
        answers = self._answer(requests)
        n = len(steps)
        return [
            Caption(answers[i][0], answers[n + i][0], answers[i][1], answers[n + i][1])
            for i in range(n)
        ]

    def _answer(self, requests: list[tuple[list[np.ndarray], str]]) -> list[tuple[str, str | None]]:
        """(text, flag) per request; flagged answers are retried once with a larger budget."""
        answers = self._generate_batched(requests, self.cfg.max_new_tokens)
        retry = [i for i, (_text, flag) in enumerate(answers) if flag is not None]
        if retry:
            self.num_retried += len(retry)
            again = self._generate_batched(
                [requests[i] for i in retry], self.cfg.retry_max_new_tokens
            )
            for i, answer in zip(retry, again, strict=True):
                answers[i] = answer
        return answers

    def _generate_batched(
        self, requests: list, max_new_tokens: int
    ) -> list[tuple[str, str | None]]:
        size = self.cfg.batch_size
        out = []
        for start in range(0, len(requests), size):
            out.extend(self._generate(requests[start : start + size], max_new_tokens))
        return out

    def _generate(self, requests: list, max_new_tokens: int) -> list[tuple[str, str | None]]:
        from PIL import Image

        torch = self._torch
        prompts = [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            *({"type": "image"} for _ in frames),
                            {"type": "text", "text": text},
                        ],
                    }
                ],
                add_generation_prompt=True,
            )
            for frames, text in requests
        ]
        images = [
            [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
            for frames, _ in requests
        ]
        inputs = self.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        for name, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[name] = value.to(self.model.dtype)
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_token_id,
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :].cpu()  # (B, <= max_new_tokens)
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        answers = []
        for row, text in zip(new_tokens.tolist(), texts, strict=True):
            text = " ".join(text.split())  # one line: captions are .txt members and CLIP inputs
            ended = any(token in self.eos_token_ids for token in row)
            flag = FLAG_EMPTY if not text else None if ended else FLAG_TRUNCATED
            answers.append((text, flag))
        return answers
