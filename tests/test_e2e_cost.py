"""The cheap end-to-end update: conv trunks frozen, their token grids cached per stored frame
(``encoder_trainable_from: tokens``), the layers above them trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.finetune.run import main
from semore.encoder import SemoreEncoder
from semore.replay import ReplayBuffer
from semore.sac import SACAgent, SACConfig
from semore.trunk_cache import TOKEN_DTYPE, cached_tokens, h_from_tokens, token_dim, tokens_to_cache
from tests.test_finetune import (
    TINY,
    load_ckpt,
    make_export,
    one_thread,  # noqa: F401  (autouse)
)

FROZEN = {
    "interaction": ("sem_trunk.", "mot_trunk."),
    "projection": ("sem_trunk.", "mot_trunk.", "interaction."),
}


def tiny_encoder() -> SemoreEncoder:
    torch.manual_seed(0)
    return SemoreEncoder(frame_stack=3, image_height=32, image_width=32, num_filters=8)


@pytest.mark.parametrize("point", ["interaction", "projection"])
def test_cached_tokens_equal_the_uncached_lower_layers_and_give_the_same_h(point):
    encoder = tiny_encoder().eval()
    encoder.freeze_below(point)
    obs = np.random.default_rng(0).integers(0, 256, (9, 32, 32), dtype=np.uint8)
    x = torch.from_numpy(obs).unsqueeze(0)
    with torch.no_grad():
        tokens = encoder.trunk_tokens(x)  # (1, S, N, C)
        assert tokens.shape == (1, 2, encoder.grid[0] * encoder.grid[1], 8)
        if point == "projection":
            tokens = encoder.interact(tokens)
        assert torch.equal(tokens_to_cache(encoder, x), tokens)
        assert torch.equal(encoder.project(tokens)["h"], encoder(x))  # the same layers
        stored = cached_tokens(encoder, obs, torch.device("cpu"))
        assert stored.dtype == TOKEN_DTYPE and stored.shape == (token_dim(encoder),)
        assert np.array_equal(stored, tokens.flatten().numpy().astype(np.float16))
        h = h_from_tokens(encoder, torch.from_numpy(stored).unsqueeze(0))
    torch.testing.assert_close(h, encoder(x), atol=2e-3, rtol=0)  # float16 storage only


def token_batch(encoder: SemoreEncoder, batch_size: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2 * batch_size, 9, 32, 32), generator=g, dtype=torch.uint8)
    tokens = tokens_to_cache(encoder, frames).flatten(1).half()
    return {
        "obs_tokens": tokens[:batch_size],
        "next_obs_tokens": tokens[batch_size:],
        "action": torch.rand(batch_size, 2, generator=g) * 2 - 1,
        "reward": torch.rand(batch_size, generator=g),
        "discount": torch.full((batch_size,), 0.99),
    }


@pytest.mark.parametrize("point", ["interaction", "projection"])
def test_updates_on_cached_tokens_train_the_upper_layers_only(point):
    encoder = tiny_encoder()
    encoder.freeze_below(point)
    agent = SACAgent(encoder, 2, SACConfig(hidden_dim=32))
    agent.set_encoder_trainable(False)
    agent.set_encoder_trainable(True)  # switching back keeps the trunks frozen
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch = token_batch(encoder)
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the presets run it
            agent.update(batch, step)
    for name, param in encoder.named_parameters():
        lower = name.startswith(FROZEN[point])
        assert param.requires_grad != lower, name
        assert (param.grad is None) == lower, name
        assert torch.equal(param, before[name]) == lower, name


def test_replay_stores_tokens_as_float16_and_samples_them():
    replay = ReplayBuffer(
        20, (32, 32, 3), 3, 2, feature_dim=16, feature_dtype=TOKEN_DTYPE, feature_key="tokens"
    )
    rng = np.random.default_rng(0)
    frame = np.zeros((32, 32, 3), np.uint8)
    replay.add_first(frame, features=np.full(16, 0.5, np.float32))
    for i in range(5):
        replay.add(np.zeros(2, np.float32), 1.0, frame, False, features=np.full(16, i, np.float32))
    batch = replay.sample(4, rng, features=True)
    assert batch["obs_tokens"].dtype == torch.float16 and batch["obs_tokens"].shape == (4, 16)
    assert "obs_h" not in batch and "obs" not in batch
    assert replay.state_dict()["features"].dtype == np.float16


def test_finetune_run_with_cached_trunk_keeps_the_trunk_and_trains_the_rest(tmp_path):
    export = tmp_path / "encoder.pt"
    encoder = make_export(export)
    out = tmp_path / "run"
    args = [*TINY, "--encoder", str(export), "--out", str(out), "--num-train-steps", "20",
            "--encoder_trainable_from", "interaction"]  # fmt: skip
    assert main(args) == 0
    ckpt = load_ckpt(out)
    assert ckpt["num_updates"] == 5
    agent = ckpt["agent"]["agent"]
    for key, value in encoder.state_dict().items():
        same = torch.equal(agent[f"encoder.{key}"], value)
        assert same == key.startswith(FROZEN["interaction"]), key
    with np.load(out / "checkpoints" / ckpt["replay_file"]) as replay:
        features = replay["features"]
    assert features.dtype == np.float16 and features.shape[1] == token_dim(encoder)
    assert np.abs(features[:10]).sum() > 0  # stored per frame
