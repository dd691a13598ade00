"""Text encoders: tiny open_clip and sentence-transformers models, the shipped MiniLM, the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.annotate.config import AnnotateConfig, OpenClipConfig, SentenceTransformersConfig
from pipeline.annotate.text_encoders import (
    MINILM_SHA256,
    CachedEncoder,
    OpenClipEncoder,
    SentenceTransformerEncoder,
    file_sha256,
    make_text_encoder,
    shipped_minilm_dir,
)
from pipeline.errors import SemoreError

TEXTS = [
    "The ego car is in the left lane of 3.",
    "A car is close, 15 m ahead in the same lane.",
    "",
]


def _assert_unit_float32(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def build_tiny_clip(folder: Path) -> tuple[Path, Path]:
    """A tiny CLIP model-config JSON (name = file stem) and a torch.save checkpoint of it."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "TinyCLIP-test.json"
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model("TinyCLIP-test", pretrained=None)
    checkpoint = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config_path, checkpoint


def build_tiny_sentence_transformer(folder: Path) -> Path:
    """A 2-layer BERT + mean pooling saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "the",
        "ego",
        "car",
        "is",
        "in",
        "left",
        "lane",
        "of",
        "a",
        "m",
        "ahead",
        ".",
    ]
    bert_dir = folder / "bert"
    bert_dir.mkdir(parents=True)
    (bert_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt")).save_pretrained(bert_dir)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=32)
    model = SentenceTransformer(
        modules=[word, models.Pooling(word.get_embedding_dimension())], device="cpu"
    )
    model.save(str(folder / "st"))
    return folder / "st"


def test_tiny_open_clip_text_tower_from_local_checkpoint(tmp_path):
    config_path, checkpoint = build_tiny_clip(tmp_path)
    cfg = OpenClipConfig(
        model_name="TinyCLIP-test", pretrained=str(checkpoint), model_config_json=str(config_path)
    )
    encoder = OpenClipEncoder(cfg, device="cpu", batch_size=2)
    assert encoder.dim == 16 and encoder.name == "open_clip:TinyCLIP-test/tiny_clip.pt"
    assert encoder.model.visual is None  # text tower only
    vectors = encoder.encode(TEXTS)
    _assert_unit_float32(vectors, 3, 16)
    assert not np.allclose(vectors[0], vectors[1])
    # Batch composition changes the last bits of a float matmul, not the embedding.
    np.testing.assert_allclose(encoder.encode(TEXTS[:1]), vectors[:1], atol=1e-6)
    with pytest.raises(SemoreError, match="checkpoint .*missing.pt not found"):
        OpenClipEncoder(
            OpenClipConfig(model_name="TinyCLIP-test", pretrained=str(tmp_path / "missing.pt")),
            "cpu",
        )
    with pytest.raises(SemoreError, match="open_clip model 'NoSuchCLIP' is unknown"):
        OpenClipEncoder(OpenClipConfig(model_name="NoSuchCLIP", pretrained=str(checkpoint)), "cpu")


def test_tiny_sentence_transformer_from_local_folder(tmp_path):
    folder = build_tiny_sentence_transformer(tmp_path)
    encoder = SentenceTransformerEncoder(str(folder), device="cpu", batch_size=2)
    assert encoder.dim == 24
    vectors = encoder.encode(TEXTS)
    _assert_unit_float32(vectors, 3, 24)
    assert not np.allclose(vectors[0], vectors[1])
    # A configured sha256 is checked before use.
    weights = folder / "model.safetensors"
    SentenceTransformerEncoder(str(folder), sha256=file_sha256(weights), device="cpu")
    with pytest.raises(SemoreError, match="has sha256 .*expected 0000000000000000"):
        SentenceTransformerEncoder(str(folder), sha256="0" * 64, device="cpu")


def test_shipped_minilm_loads_offline_with_verified_weights():
    assert file_sha256(shipped_minilm_dir() / "model.safetensors") == MINILM_SHA256
    encoder = make_text_encoder(AnnotateConfig(device="cpu"))
    assert encoder.dim == 384 and encoder.name.startswith(
        "sentence-transformers:all-MiniLM-L6-v2@53aa5117"
    )
    vectors = encoder.encode(
        ["a car ahead in the same lane", "a vehicle in front in my lane", "heavy rain at night"]
    )
    _assert_unit_float32(vectors, 3, 384)
    # Real weights: paraphrases are closer than unrelated sentences.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_tampered_minilm_copy_fails_with_one_line_error(tmp_path):
    source = shipped_minilm_dir()
    copy = tmp_path / "minilm"
    copy.mkdir()
    for path in source.iterdir():  # links for all but the weights, which get one byte changed
        if path.name != "model.safetensors":
            os.symlink(path, copy / path.name)
    shutil.copyfile(source / "model.safetensors", copy / "model.safetensors")
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    cfg = AnnotateConfig(
        device="cpu", sentence_transformers=SentenceTransformersConfig(str(copy), MINILM_SHA256)
    )
    with pytest.raises(SemoreError) as err:
        make_text_encoder(cfg)
    message = str(err.value)
    assert (
        "\n" not in message
        and "model.safetensors has sha256" in message
        and MINILM_SHA256[:16] in message
    )


class CountingEncoder:
    name, dim = "counting", 3

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += texts
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32) / np.sqrt(
            np.array([[len(t) ** 2 + 1.0] for t in texts])
        )


def test_cache_embeds_each_distinct_caption_once():
    inner = CountingEncoder()
    cache = CachedEncoder(inner)
    first = cache.encode(["a", "bb", "a", "ccc"])
    second = cache.encode(["bb", "dddd", "a"])
    assert inner.seen == ["a", "bb", "ccc", "dddd"]
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(second[2], first[0])
    assert (cache.lookups, cache.calls, cache.hits) == (7, 4, 3)
    cache.reset()
    assert (cache.lookups, cache.calls, cache.hits) == (0, 0, 0)
    cache.encode(["a"])
    assert inner.seen[-1] == "a"
