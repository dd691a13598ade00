"""``guide.replay_every``: guide batches of the agent's own replayed frames, captioned online."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.annotate.config import SceneConfig
from pipeline.annotate.scene import SceneCaptioner
from pipeline.config import load_config
from pipeline.data import schema
from pipeline.finetune import captions
from pipeline.finetune.captions import OnlineCaptions
from pipeline.finetune.config import FinetuneConfig, GuideConfig
from pipeline.finetune.eval import read_metrics, replay_episode
from pipeline.finetune.guide import export_stats, replay_guide_batch
from pipeline.finetune.run import main
from pipeline.sim import make_env
from pipeline.sim.driver import Driver
from pipeline.sim.seeding import train_episode_seed
from semore.encoder import load_encoder_metadata
from semore.guide import FROM_REPLAY
from semore.replay import ReplayBuffer
from tests import test_guided
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import HashTextEncoder, caption_embedding, write_synthetic_ann
from tests.test_finetune import (
    CONFIG,
    TINY,
    error_line,
    load_ckpt,
    one_thread,  # noqa: F401  (autouse)
)
from tests.test_guided import GUIDE, TERMS
from tests.test_guided import run as guided_run

pretrained = test_guided.pretrained  # the module's tiny pretraining export (a fixture)

REPLAY = ["--encoder_mode", "guided", "--guide.replay_every", "2"]
ENV = ["--env.highway.image_height", "32", "--env.highway.image_width", "32",
       "--env.highway.max_episode_steps", "15"]  # fmt: skip


@pytest.fixture
def hash_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny datasets are embedded by the tests' hash encoder: rebuild that one online."""
    monkeypatch.setattr(captions, "make_text_encoder", lambda cfg: HashTextEncoder(16))


def replay_state(out: Path) -> dict[str, np.ndarray]:
    path = out / "checkpoints" / load_ckpt(out)["replay_file"]
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


class TimedCaptioner(SceneCaptioner):
    """Scene captions whose motion caption also names the earlier step's time: a resumed run
    that lost the annotator's history of the open episode would caption differently."""

    def motion(self, prev: dict, state: dict) -> str:
        return f"{super().motion(prev, state)} Since {prev['time_s']:.1f} s."


def test_replay_guide_batches_are_logged_and_a_resume_continues_exactly(
    pretrained, tmp_path, hash_encoder, monkeypatch
):
    out = tmp_path / "replay"
    assert guided_run(pretrained, out, *REPLAY) == 0
    train = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    for term in TERMS:  # both sources, each under its own names
        assert any(r.get(term, "") != "" for r in train), term
        replay_term = term.replace("guide_", "guide_replay_")
        assert any(r.get(replay_term, "") != "" for r in train), replay_term
    assert int(load_ckpt(out)["agent"]["agent"]["guide.num_drawn"]) == 5
    assert replay_state(out)["ann_emb_sem"].shape[1] == 16

    # Every guide batch from the replay: a resumed run is the uninterrupted one, bit for bit.
    monkeypatch.setattr(captions, "SceneCaptioner", TimedCaptioner)
    every = ["--encoder_mode", "guided", "--guide.replay_every", "1"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert guided_run(pretrained, whole, *every, "--num-train-steps", "24") == 0
    assert guided_run(pretrained, split, *every) == 0
    resume = [*TINY, "--encoder", str(pretrained), "--out", str(split), "--resume", *GUIDE]
    assert main([*resume, *every, "--num-train-steps", "24"]) == 0
    a, b = load_ckpt(whole)["agent"]["agent"], load_ckpt(split)["agent"]["agent"]
    assert int(a["guide.num_drawn"]) == int(b["guide.num_drawn"]) == 7
    assert all(torch.equal(value, b[key]) for key, value in a.items())
    ra, rb = replay_state(whole), replay_state(split)
    assert all(np.array_equal(ra[key], rb[key]) for key in ra if key.startswith("ann_"))


def test_replay_guide_batches_on_cached_tokens(pretrained, tmp_path, hash_encoder):
    """With frozen lower layers the replay's stored tokens feed the guide, not its frames."""
    out = tmp_path / "tokens"
    assert guided_run(pretrained, out, *REPLAY, "--encoder_trainable_from", "projection") == 0
    train = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    assert any(r.get("guide_replay_loss", "") != "" for r in train)
    saved = replay_state(out)
    assert saved["features"].dtype == np.float16 and "ann_emb_mot" in saved


def test_stored_embeddings_are_the_captions_of_the_replayed_states(
    pretrained, tmp_path, hash_encoder
):
    """Re-drive the run's first training episode with the stored actions: each slot holds
    the text encoder's embedding of the scene captions of that step's state."""
    out = tmp_path / "run"
    assert guided_run(pretrained, out, *REPLAY) == 0
    saved = replay_state(out)
    (slots,) = np.nonzero(saved["episode_start"] == 0)
    assert len(slots) > 3
    cfg = load_config(FinetuneConfig, str(CONFIG), ENV, stage="finetune")
    states = []
    driver = Driver(make_env(cfg.env), 1, cfg.frame_stack)
    try:
        seed = train_episode_seed(cfg.seed, 0)
        replay_episode(
            driver, seed, saved["action"][slots[1:]], lambda s, _: states.append(s.state)
        )
    finally:
        driver.close()
    scene = SceneCaptioner(SceneConfig())  # the dataset's annotate config: motion gap 1
    for i, slot in enumerate(slots):
        prev = states[max(i - 1, 0)]
        sem = caption_embedding(scene.semantic(states[i]), 16)
        mot = caption_embedding(scene.motion(prev, states[i]), 16)
        np.testing.assert_array_equal(saved["ann_emb_sem"][slot], sem)
        np.testing.assert_array_equal(saved["ann_emb_mot"][slot], mot)
        np.testing.assert_array_equal(saved["ann_motion"][slot], schema.motion_targets(states[i]))


def test_motion_gap_keyframes_and_batches_follow_annotate(pretrained):
    """Motion captions pair step t with t - gap (clipped), keyframe captions carry over the
    stride, and a replay guide batch row is the step's stack, action, reward and targets."""
    cfg = load_config(FinetuneConfig, str(CONFIG), ENV, stage="finetune")
    scene, encoder = SceneCaptioner(SceneConfig()), HashTextEncoder(16)
    online = OnlineCaptions(scene, encoder, motion_gap_steps=2, keyframe_stride=2)
    replay = ReplayBuffer(64, (32, 32, 3), 3, 2, annotation_dims=online.annotation_dims)
    driver = Driver(make_env(cfg.env), 1, 3)
    rng = np.random.default_rng(0)
    try:
        step = driver.reset(7)
        states, frames, actions, rewards = [step.state], [step.frame.copy()], [], []
        replay.add_first(step.frame, annotations=online.start(step.state))
        for _ in range(8):
            actions.append(rng.uniform(-1, 1, 2).astype(np.float32))
            step = driver.step(actions[-1])
            states.append(step.state)
            frames.append(step.frame.copy())
            rewards.append(step.reward)
            annotations = online.step(step.state)
            replay.add(actions[-1], step.reward, step.frame, False, annotations=annotations)
    finally:
        driver.close()
    stored = replay.state_dict()
    for t in range(len(states)):
        key = t - t % 2  # the keyframe whose captions step t carries
        mot = caption_embedding(scene.motion(states[max(key - 2, 0)], states[key]), 16)
        np.testing.assert_array_equal(stored["ann_emb_mot"][t], mot)
        sem = caption_embedding(scene.semantic(states[key]), 16)
        np.testing.assert_array_equal(stored["ann_emb_sem"][t], sem)
    assert online.hits < online.lookups  # cached texts are looked up, new ones encoded

    stats = export_stats(load_encoder_metadata(pretrained), len(schema.CAPTION_STATE_FIELDS))
    batch = replay_guide_batch(replay, 6, stats, seed=3, tokens=False)
    assert FROM_REPLAY in batch and batch["obs"].shape == (6, 9, 32, 32)
    mean, std = torch.from_numpy(stats.motion_mean), torch.from_numpy(stats.motion_std)
    standardised = (torch.from_numpy(stored["ann_motion"][:8]) - mean) / std
    for row in range(6):
        (t,) = [t for t in range(8) if torch.equal(standardised[t], batch["motion"][row])]
        np.testing.assert_array_equal(batch["action"][row].numpy(), actions[t])
        reward = batch["reward"][row].item() * stats.reward_std + stats.reward_mean
        assert reward == pytest.approx(rewards[t], abs=1e-4)
        np.testing.assert_array_equal(batch["obs"][row, -3:].numpy(), frames[t].transpose(2, 0, 1))


def test_bad_replay_every_or_a_dataset_that_cannot_be_captioned_online_is_one_line(
    pretrained, tmp_path, capsys
):
    with pytest.raises(ValueError, match=r"replay_every is -1: expected an int in \[0, 1e9\]"):
        GuideConfig(replay_every=-1)
    assert guided_run(pretrained, tmp_path / "a", "--guide.replay_every", "-1") == 2
    assert "guide.replay_every is -1" in error_line(capsys)

    vlm = write_synthetic_ann(write_synthetic_raw(tmp_path / "vlm"), embedding_dim=16)
    manifest = json.loads((vlm / "manifest.json").read_text())
    manifest["ann"]["captioner"] = "vlm:Qwen/Qwen2-VL-2B-Instruct"
    (vlm / "manifest.json").write_text(json.dumps(manifest))
    assert guided_run(pretrained, tmp_path / "b", *REPLAY, "--guide.data", str(vlm)) == 2
    line = error_line(capsys)
    assert "captioned by 'vlm:Qwen/Qwen2-VL-2B-Instruct': expected 'scene-v" in line

    assert guided_run(pretrained, tmp_path / "c", *REPLAY, "--action_repeat", "2") == 2
    assert "action_repeat is 2: expected 1" in error_line(capsys)

    # The manifest's annotate config rebuilds the shipped MiniLM, not the hash encoder.
    assert guided_run(pretrained, tmp_path / "d", *REPLAY) == 2
    line = error_line(capsys)
    assert "embedded by 'hash-test-16' (16-d)" in line and "all-MiniLM-L6-v2" in line
    assert not (tmp_path / "d" / "checkpoints").exists()


def test_a_checkpoint_from_before_replay_every_and_smoothness_resumes(pretrained, tmp_path):
    out = tmp_path / "old"
    assert guided_run(pretrained, out, "--encoder_mode", "finetune") == 0
    path = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    del checkpoint["config"]["guide"]["replay_every"]  # as written before the fields existed
    del checkpoint["config"]["sac"]["action_smoothness_weight"]
    del checkpoint["config"]["sac"]["action_smoothness_dims"]
    torch.save(checkpoint, path)
    resume = [*TINY, "--encoder", str(pretrained), "--out", str(out), "--resume", *GUIDE]
    assert main([*resume, "--encoder_mode", "finetune", "--num-train-steps", "24"]) == 0
    assert load_ckpt(out)["step"] == 24
    # A field added off is not a wildcard: resuming with the term on is refused.
    smooth = ["--sac.action_smoothness_weight", "5", "--num-train-steps", "28"]
    assert main([*resume, "--encoder_mode", "finetune", *smooth]) == 2
