"""The ``vlm`` captioner on a tiny Qwen2-VL built here, saved, and loaded back via Auto classes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from pipeline.annotate.base import FLAG_EMPTY, FLAG_TRUNCATED, Step
from pipeline.annotate.config import VLMConfig
from pipeline.annotate.run import main
from pipeline.annotate.vlm import PROMPT_DIR, VLMCaptioner, load_prompt
from pipeline.data import schema
from pipeline.data.shards import iter_shard
from pipeline.errors import SemoreError

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "annotate" / "quickstart.yaml"
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
WORDS = [
    "[UNK]",
    "user",
    "assistant",
    "the",
    "a",
    "car",
    "lane",
    "left",
    "right",
    "ahead",
    "slow",
    "fast",
    "road",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %} {{ c['text'] }} {% endif %}"
    "{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def build_tiny_vlm(folder: Path, force_token: str | None = None) -> Path:
    """A ~50k-parameter Qwen2-VL + processor; ``force_token`` makes every generated token that one."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]"
    )
    # 28x28..56x56 pixels: one to four merged image tokens per frame.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
            bos_token_id=None,
            eos_token_id=vocab["<|im_end|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    if force_token is not None:
        # Every input embeds to e_0 and the decoder layers add nothing, so the final hidden
        # state is a positive multiple of e_0; the head scores only `force_token` on e_0.
        with torch.no_grad():
            embed = model.get_input_embeddings().weight
            embed.zero_()
            embed[:, 0] = 1.0
            for layer in model.model.language_model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.lm_head.weight.zero_()
            model.lm_head.weight[vocab[force_token], 0] = 1.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {
        "random": build_tiny_vlm(root / "random"),
        "empty": build_tiny_vlm(root / "empty", force_token="<|im_end|>"),
        "truncated": build_tiny_vlm(root / "truncated", force_token="car"),
    }


def _steps(n: int) -> list[Step]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8) for _ in range(n + 1)]
    return [Step(f"k{i}", {}, {}, frames[i + 1], frames[i]) for i in range(n)]


def test_prompts_are_shipped_files_hashed_by_text(tmp_path):
    text, digest = load_prompt("semantic")
    assert text == (PROMPT_DIR / "semantic.txt").read_text().strip() and len(text) > 20
    assert digest == hashlib.sha256(text.encode()).hexdigest()
    custom = tmp_path / "mine.txt"
    custom.write_text("Describe the road.\n")
    assert load_prompt(str(custom))[0] == "Describe the road."
    with pytest.raises(
        SemoreError, match="prompt 'nope' not found.*expected one of motion, semantic"
    ):
        load_prompt("nope")


def test_vlm_loads_from_local_folder_and_captions_deterministically(tiny_vlms):
    cfg = VLMConfig(
        model=str(tiny_vlms["random"]), max_new_tokens=4, retry_max_new_tokens=6, batch_size=3
    )
    captioner = VLMCaptioner(cfg, device="cpu")
    assert captioner.id == f"vlm:{tiny_vlms['random']}"
    assert captioner.prompt_hashes == {
        "semantic": load_prompt("semantic")[1],
        "motion": load_prompt("motion")[1],
    }
    steps = _steps(5)  # 10 prompts in batches of 3: padding and batching are exercised
    captions = captioner.caption(steps)
    assert len(captions) == 5
    for caption in captions:
        assert isinstance(caption.semantic, str) and isinstance(caption.motion, str)
        assert "\n" not in caption.semantic + caption.motion
        assert caption.sem_flag in (None, FLAG_EMPTY, FLAG_TRUNCATED)
        assert caption.mot_flag in (None, FLAG_EMPTY, FLAG_TRUNCATED)
    assert captioner.caption(steps) == captions  # greedy decoding is deterministic


def test_empty_and_truncated_answers_are_retried_then_flagged(tiny_vlms):
    empty = VLMCaptioner(
        VLMConfig(model=str(tiny_vlms["empty"]), max_new_tokens=3, retry_max_new_tokens=5), "cpu"
    )
    captions = empty.caption(_steps(2))
    assert [(c.semantic, c.sem_flag, c.motion, c.mot_flag) for c in captions] == [
        ("", FLAG_EMPTY, "", FLAG_EMPTY)
    ] * 2
    assert empty.num_retried == 4

    cut = VLMCaptioner(
        VLMConfig(model=str(tiny_vlms["truncated"]), max_new_tokens=3, retry_max_new_tokens=5),
        "cpu",
    )
    captions = cut.caption(_steps(2))
    # The retry used the larger budget: five words, still without an end token.
    assert [(c.semantic, c.sem_flag, c.mot_flag) for c in captions] == [
        ("car car car car car", FLAG_TRUNCATED, FLAG_TRUNCATED)
    ] * 2
    assert cut.num_retried == 4


def test_missing_model_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SemoreError, match="cannot load VLM") as err:
        VLMCaptioner(VLMConfig(model=str(tmp_path / "missing")), "cpu")
    assert "\n" not in str(err.value)


def test_keyframe_stride_carries_captions_and_flags_are_counted(raw_dataset, tiny_vlms, capsys):
    model = tiny_vlms["truncated"]
    argv = ["--config", str(QUICKSTART), "--data", str(raw_dataset), "--captioner", "vlm",
            "--vlm.model", str(model), "--vlm.max_new_tokens", "2", "--vlm.retry_max_new_tokens", "3",
            "--keyframe_stride", "4", "--motion_gap_steps", "2", "--device", "cpu", "--num_threads", "1"]  # fmt: skip
    assert main(argv) == 0
    section = json.loads((raw_dataset / schema.MANIFEST_NAME).read_text())["ann"]
    assert section["captioner"] == f"vlm:{model}"
    assert section["prompts"] == {
        "semantic": load_prompt("semantic")[1],
        "motion": load_prompt("motion")[1],
    }
    samples = [
        s
        for path in sorted((raw_dataset / schema.ANN_DIR).glob("ann-*.tar"))
        for s in iter_shard(path)
    ]
    assert len(samples) == 24
    for sample in samples:
        step = schema.parse_key(sample["__key__"]).step
        info = sample[schema.ANN_INFO]
        assert info == {
            "captioned_step": step // 4 * 4,
            "sem_flag": FLAG_TRUNCATED,
            "mot_flag": FLAG_TRUNCATED,
        }
        assert sample[schema.CAPTION_SEM] == "car car car"
    # 6-step episodes with stride 4: steps 0 and 4 are captioned, each with two flagged captions.
    totals = section["totals"]
    assert totals["captioned_steps"] == 4 * 2
    assert totals["flagged_captions"] == totals["retried_captions"] == 2 * 8
