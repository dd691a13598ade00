"""SemoreEncoder shapes, streams, interaction, export round-trip, and RandomShift."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from semore.augment import RandomShift, grid_crop, slice_crop
from semore.encoder import (
    EncoderArch,
    EncoderConfig,
    SemoreEncoder,
    load_encoder,
    load_encoder_metadata,
    load_export,
    save_encoder,
    trunk_output_size,
)


def make_obs(batch: int, frame_stack: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3 * frame_stack, height, width), generator=gen).to(
        torch.uint8
    )


@pytest.mark.parametrize("size", [(84, 84), (84, 420), (32, 32)])
@pytest.mark.parametrize("frame_stack", [1, 3])
def test_output_shapes_for_sizes_and_frame_stacks(size, frame_stack):
    torch.manual_seed(0)
    encoder = SemoreEncoder(frame_stack, *size, num_filters=8, repr_dim=50).eval()
    out = encoder.encode(make_obs(2, frame_stack, *size))
    assert out["h"].shape == (2, 50)
    assert out["z_sem"].shape == (2, encoder.sem_dim)
    assert out["z_mot"].shape == (2, encoder.mot_dim)
    assert torch.isfinite(out["h"]).all()
    assert out["h"].abs().max() <= 1.0  # tanh output
    assert torch.equal(encoder(make_obs(2, frame_stack, *size)), out["h"])


@pytest.mark.parametrize("streams", ["semantic", "motion", "both"])
@pytest.mark.parametrize("interaction", [True, False])
def test_streams_and_interaction_flags(streams, interaction):
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 32, num_filters=8, streams=streams, interaction=interaction)
    encoder.eval()
    out = encoder.encode(make_obs(4, 3, 32, 32))
    expected_keys = {"h"}
    expected_keys |= {"z_sem"} if streams in ("semantic", "both") else set()
    expected_keys |= {"z_mot"} if streams in ("motion", "both") else set()
    assert set(out) == expected_keys
    assert encoder.sem_dim == (out["z_sem"].shape[1] if "z_sem" in out else 0)
    assert encoder.mot_dim == (out["z_mot"].shape[1] if "z_mot" in out else 0)
    has_interaction = encoder.interaction is not None
    assert has_interaction == (interaction and streams == "both")
    # Deterministic in eval mode.
    assert torch.equal(encoder(make_obs(4, 3, 32, 32)), out["h"])


def test_uint8_and_float_inputs_give_same_h():
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 32, num_filters=8).eval()
    obs = make_obs(3, 3, 32, 32)
    torch.testing.assert_close(encoder(obs), encoder(obs.float()))


def test_interaction_is_identity_at_init():
    torch.manual_seed(0)
    with_interaction = SemoreEncoder(3, 32, 32, num_filters=8, interaction=True).eval()
    without = SemoreEncoder(3, 32, 32, num_filters=8, interaction=False).eval()
    missing, unexpected = without.load_state_dict(with_interaction.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("interaction.") for k in unexpected)
    obs = make_obs(2, 3, 32, 32)
    torch.testing.assert_close(with_interaction(obs), without(obs))
    # Opening the gates makes the streams exchange information.
    with torch.no_grad():
        with_interaction.interaction.gate_sem.fill_(1.0)
        with_interaction.interaction.gate_mot.fill_(1.0)
    assert not torch.allclose(with_interaction(obs), without(obs))


def test_motion_stream_sees_frame_changes_semantic_only_latest_frame():
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 32, num_filters=8, interaction=False).eval()
    obs = make_obs(1, 3, 32, 32)
    changed = obs.clone()
    changed[:, :3] = 255 - changed[:, :3]  # alter only the oldest frame
    a, b = encoder.encode(obs), encoder.encode(changed)
    torch.testing.assert_close(a["z_sem"], b["z_sem"])
    assert not torch.allclose(a["z_mot"], b["z_mot"])


def test_gradients_reach_both_trunks():
    encoder = SemoreEncoder(3, 32, 32, num_filters=8)
    encoder(make_obs(2, 3, 32, 32)).square().sum().backward()
    for trunk in (encoder.sem_trunk, encoder.mot_trunk):
        assert trunk[0].weight.grad is not None and trunk[0].weight.grad.abs().sum() > 0


def test_wrong_input_shape_raises():
    encoder = SemoreEncoder(3, 32, 32, num_filters=8)
    with pytest.raises(ValueError, match="expected"):
        encoder(make_obs(1, 1, 32, 32))


@pytest.mark.parametrize(
    "field, value",
    [
        ("streams", "audio"),
        ("frame_stack", 0),
        ("image_width", 8),
        ("num_heads", 3),
        ("max_tokens", 0),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**{field: value})


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 48, num_filters=8, repr_dim=16, streams="both").eval()
    with torch.no_grad():  # non-trivial interaction so it is part of the round trip
        encoder.interaction.gate_sem.fill_(0.5)
    path = tmp_path / "sub" / "encoder.pt"
    save_encoder(path, encoder, metadata={"run": "test", "step": 7})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["encoder.pt"]  # no temp file left
    loaded = load_encoder(path).eval()
    assert loaded.config == encoder.config
    assert asdict(loaded.config) == asdict(encoder.config)
    obs = make_obs(2, 3, 32, 48)
    assert torch.equal(loaded(obs), encoder(obs))
    assert load_encoder_metadata(path) == {"run": "test", "step": 7}
    rebuilt = SemoreEncoder.from_config(encoder.config)
    assert rebuilt.config == encoder.config


def test_max_tokens_sets_the_token_grid_and_older_exports_load_with_the_8x8_default(tmp_path):
    fine = SemoreEncoder(3, 84, 84, trunk="drq", num_filters=8, max_tokens=144)
    assert fine.grid == (12, 12)  # the 35x35 trunk map pooled to 12x12
    assert fine.interaction.position.shape == (1, 144, 8)
    assert fine(make_obs(2, 3, 84, 84)).shape == (2, 50)
    assert SemoreEncoder(3, 84, 84, trunk="drq", num_filters=8).grid == (8, 8)

    path = tmp_path / "encoder.pt"
    save_encoder(path, fine)
    assert load_encoder(path).grid == (12, 12)
    old = SemoreEncoder(3, 32, 32, trunk="drq", num_filters=8)
    save_encoder(path, old)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["max_tokens"]  # an export written before the field existed
    del payload["config"]["trunk"]  # ... and before the strided trunk: it ran the DrQ trunk
    torch.save(payload, path)
    assert load_encoder(path).config == old.config


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match="missing.pt"):
        load_encoder(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_encoder(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*semore-encoder"):
        load_encoder(foreign)

    encoder = SemoreEncoder(1, 32, 32, num_filters=4, repr_dim=8)
    future = tmp_path / "future.pt"
    save_encoder(future, encoder)
    payload = torch.load(future, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, future)
    with pytest.raises(ValueError, match=r"future.pt.*99.*expected 1"):
        load_encoder(future)
    with pytest.raises(ValueError, match="future.pt"):
        load_encoder_metadata(future)


def test_random_shift_preserves_shape_and_dtype_range():
    shift = RandomShift(pad=4)
    obs = make_obs(5, 3, 84, 420)
    out = shift(obs)
    assert out.shape == obs.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, out.round())  # whole pixels copied, no interpolation


def test_random_shift_pad_zero_is_identity():
    obs = make_obs(3, 3, 20, 36).float()
    assert torch.equal(RandomShift(pad=0)(obs), obs)


def test_random_shift_copies_shifted_pixels_per_sample():
    torch.manual_seed(0)
    height, width, pad = 6, 10, 2
    # Unique value per pixel, same image in every sample.
    image = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    batch = image.expand(64, 1, height, width).contiguous()
    out = RandomShift(pad=pad)(batch)
    padded = torch.nn.functional.pad(image, (pad,) * 4, mode="replicate")[0, 0]
    offsets = set()
    for sample in out[:, 0]:
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(sample, padded[dy : dy + height, dx : dx + width])
        ]
        assert matches, "every output must be a crop of the replicate-padded input"
        offsets.add(matches[0])
    assert len(offsets) > 5  # independent offsets per sample


def test_pretraining_heads_read_h_so_every_term_reaches_the_representation():
    from semore.heads import SemorePretrainModel

    torch.manual_seed(0)
    enc = SemoreEncoder(frame_stack=3, image_height=32, image_width=32, num_filters=8)
    obs = torch.randint(0, 256, (4, 9, 32, 32), dtype=torch.uint8)
    action = torch.zeros(4, 2)
    for heads_read, reaches_fuse in (("h", True), ("streams", False)):
        model = SemorePretrainModel(
            enc, text_dim=16, motion_dim=6, action_dim=2, heads_read=heads_read
        )
        enc.zero_grad(set_to_none=True)
        out = model(obs, action)
        (out["sem_proj"].sum() + out["mot_proj"].sum() + out["motion_pred"].sum()).backward()
        assert (enc.fuse[0].weight.grad is not None) == reaches_fuse
    with pytest.raises(ValueError, match="heads_read"):
        SemorePretrainModel(enc, 16, 6, 2, heads_read="both")


def test_the_architecture_is_defined_once():
    arch = {f.name: f.default for f in fields(EncoderArch)}
    inputs = {"frame_stack": 3, "image_height": 32, "image_width": 32}
    assert {f.name for f in fields(EncoderConfig)} == set(inputs) | set(arch)
    assert asdict(SemoreEncoder(3, 32, 32).config) == {**inputs, **arch}
    config = EncoderArch(num_filters=8, repr_dim=16).to_config(3, 32, 32)
    assert config == EncoderConfig(3, 32, 32, num_filters=8, repr_dim=16)
    assert EncoderArch.of(config) == EncoderArch(num_filters=8, repr_dim=16)
    with pytest.raises(TypeError, match="filters"):
        SemoreEncoder(3, 32, 32, filters=8)
    with pytest.raises(ValueError, match="EncoderArch.num_heads=3"):
        EncoderArch(num_heads=3)


def test_load_export_reads_encoder_and_metadata_together(tmp_path):
    torch.manual_seed(0)
    encoder = SemoreEncoder(3, 32, 32, num_filters=8).eval()
    save_encoder(tmp_path / "e.pt", encoder, {"run": "x"})
    loaded, metadata = load_export(tmp_path / "e.pt")
    assert metadata == {"run": "x"} and loaded.config == encoder.config
    obs = make_obs(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(obs), encoder(obs))


def _trunk_flops(trunk: str) -> int:
    encoder = SemoreEncoder(3, 84, 84, trunk=trunk)
    obs = make_obs(1, 3, 84, 84)
    with FlopCounterMode(display=False) as counter:
        encoder.trunk_tokens(obs)
    return counter.get_total_flops()


def test_strided_trunk_yields_the_token_grid_directly_at_under_a_quarter_of_the_cost():
    assert SemoreEncoder(3, 84, 84).config.trunk == "drq"  # the default (tune_trunk)
    strided = SemoreEncoder(3, 84, 84, trunk="strided")
    assert trunk_output_size(84, 84, "strided") == (7, 7) and strided.grid == (7, 7)
    assert isinstance(strided.pool, torch.nn.Identity)  # no map computed only to be averaged
    tokens = strided.trunk_tokens(make_obs(2, 3, 84, 84))
    assert tokens.shape == (2, 2, 49, 32)  # (B, streams, 7x7 cells, filters)
    assert trunk_output_size(84, 84, "drq") == (35, 35)
    assert trunk_output_size(84, 84, "strided4") == (16, 16)  # pooled 2x2 to 8x8
    assert SemoreEncoder(3, 84, 84, trunk="strided4").grid == (8, 8)
    # A panorama's map is wider than the cap allows: pooled to the grid as before.
    panorama = SemoreEncoder(3, 84, 420, trunk="strided")
    assert panorama.grid[0] * panorama.grid[1] <= 64
    ratio = _trunk_flops("drq") / _trunk_flops("strided")
    assert ratio > 4, f"strided trunk only {ratio:.1f}x cheaper than drq"
    with pytest.raises(ValueError, match="image_height=24; expected an int >= 31 for the strided"):
        SemoreEncoder(3, 24, 84, trunk="strided")
    with pytest.raises(ValueError, match="trunk='resnet'"):
        SemoreEncoder(3, 84, 84, trunk="resnet")


def test_shift_by_slices_equals_the_grid_sample_shift():
    padded = torch.randint(0, 256, (6, 9, 28, 44)).float()  # 20x36 frames padded by 4
    shift = torch.randint(0, 9, (6, 2))
    crops = slice_crop(padded, shift, 4)
    assert crops.shape == (6, 9, 20, 36)
    assert torch.equal(crops, grid_crop(padded, shift, 4))
    dx, dy = shift[2].tolist()
    assert torch.equal(crops[2], padded[2, :, dy : dy + 20, dx : dx + 36])


@pytest.mark.parametrize("trunk", ["strided", "drq"])
def test_first_conv_folded_onto_pixels_is_the_same_function(trunk):
    """The scaling to [-0.5, 0.5] and the motion stream's frame differences folded into the
    first convs give the tokens of the explicit computation."""
    torch.manual_seed(0)
    encoder = SemoreEncoder(4, 40, 40, trunk=trunk, num_filters=8, interaction=False)
    obs = make_obs(3, 4, 40, 40)
    x = obs.float() / 255.0 - 0.5
    frames = x.unflatten(1, (4, 3))  # (B, K, 3, H, W)
    diffs = (frames[:, 1:] - frames[:, :-1]).flatten(1, 2)  # (B, 9, H, W)
    explicit = [
        encoder.pool(encoder.sem_trunk(x[:, -3:])),
        encoder.pool(encoder.mot_trunk(torch.cat([x, diffs], 1))),
    ]
    expected = torch.stack([m.flatten(2).transpose(1, 2) for m in explicit], 1)
    torch.testing.assert_close(encoder.trunk_tokens(obs), expected, atol=1e-5, rtol=1e-4)
