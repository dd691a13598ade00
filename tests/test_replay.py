"""ReplayBuffer and FrameStack: exact stacks, episode boundaries, ring wrap, n-step returns."""

import numpy as np
import pytest
import torch

from semore.replay import FrameStack, ReplayBuffer

H, W, K = 4, 5, 3


def frame(episode: int, step: int) -> np.ndarray:
    """A frame whose pixels encode (episode, step): channel 0 = episode, channel 1 = step."""
    out = np.zeros((H, W, 3), np.uint8)
    out[..., 0] = episode
    out[..., 1] = step
    out[..., 2] = 7
    return out


def decode(stack) -> list[tuple[int, int]]:
    """(3K, H, W) stack -> [(episode, step)] per frame, oldest first."""
    stack = np.asarray(stack)
    assert stack.shape == (3 * K, H, W)
    frames = stack.reshape(K, 3, H, W)
    assert (frames[:, 2] == 7).all()
    # every pixel of a frame carries the same code, so a mixed-up frame would show
    assert (frames == frames[:, :, :1, :1]).all()
    return [(int(f[0, 0, 0]), int(f[1, 0, 0])) for f in frames]


def expected_stack(episode: int, step: int) -> list[tuple[int, int]]:
    return [(episode, max(step - i, 0)) for i in range(K - 1, -1, -1)]


def add_episode(buf, episode: int, num_steps: int, terminal: bool, motion_dim: int = 0):
    """Add an episode; reward into step s is 100*episode + s, action into step s is (episode, s)."""

    def motion(s):
        return np.array([episode, s], np.float32) if motion_dim else None

    buf.add_first(frame(episode, 0), motion=motion(0))
    for s in range(1, num_steps + 1):
        buf.add(
            np.array([episode, s], np.float32),
            100.0 * episode + s,
            frame(episode, s),
            terminal=terminal and s == num_steps,
            motion=motion(s),
        )


def sample_all(buf, batch_size=512, seed=0):
    batch = buf.sample(batch_size, np.random.default_rng(seed))
    rows = []
    for b in range(batch_size):
        rows.append({key: value[b].numpy() for key, value in batch.items()})
    return batch, rows


def test_stacks_at_episode_boundaries_and_terminal_vs_truncation():
    buf = ReplayBuffer(100, (H, W, 3), K, action_dim=2, discount=0.9, nstep=1)
    add_episode(buf, 0, 4, terminal=True)
    add_episode(buf, 1, 3, terminal=False)  # truncated: closed by the next add_first
    add_episode(buf, 2, 2, terminal=False)  # still open
    assert len(buf) == 4 + 3 + 2

    batch, rows = sample_all(buf)
    assert batch["obs"].dtype == batch["next_obs"].dtype == torch.uint8
    assert batch["obs"].shape == (512, 3 * K, H, W)
    assert batch["action"].shape == (512, 2)
    assert set(batch) == {"obs", "action", "reward", "reward1", "discount", "next_obs"}
    seen = set()
    for row in rows:
        episode, step = decode(row["obs"])[-1]
        seen.add((episode, step))
        assert decode(row["obs"]) == expected_stack(episode, step)
        assert decode(row["next_obs"]) == expected_stack(episode, step + 1)
        np.testing.assert_array_equal(row["action"], [episode, step + 1])
        assert row["reward"] == pytest.approx(100 * episode + step + 1)
        assert row["reward1"] == row["reward"]  # nstep 1
        terminal = episode == 0 and step == 3
        assert row["discount"] == pytest.approx(0.0 if terminal else 0.9)
    assert seen == {(0, s) for s in range(4)} | {(1, s) for s in range(3)} | {(2, 0), (2, 1)}

    # spelled out: the first step repeats the first frame, the last step sees the last frame
    assert expected_stack(1, 0) == [(1, 0)] * 3
    assert expected_stack(1, 3) == [(1, 1), (1, 2), (1, 3)]


def test_add_after_terminal_needs_add_first():
    buf = ReplayBuffer(20, (H, W, 3), K, action_dim=2)
    with pytest.raises(ValueError, match="add_first"):
        buf.add(np.zeros(2, np.float32), 0.0, frame(0, 1), terminal=False)
    add_episode(buf, 0, 2, terminal=True)
    with pytest.raises(ValueError, match="add_first"):
        buf.add(np.zeros(2, np.float32), 0.0, frame(0, 3), terminal=False)
    with pytest.raises(ValueError, match="no complete transition"):
        ReplayBuffer(20, (H, W, 3), K, action_dim=2).sample(4, np.random.default_rng(0))


def test_ring_wrap_never_returns_overwritten_frames():
    capacity = 11
    buf = ReplayBuffer(capacity, (H, W, 3), K, action_dim=2, nstep=2, discount=0.5)
    frames_added = []  # absolute index -> (episode, step)
    rng = np.random.default_rng(1)
    for episode in range(9):
        num_steps = int(rng.integers(1, 7))
        terminal = bool(rng.integers(0, 2))
        add_episode(buf, episode, num_steps, terminal)
        frames_added += [(episode, s, num_steps, terminal) for s in range(num_steps + 1)]
        oldest = len(frames_added) - capacity
        index = {(e, s): i for i, (e, s, _, _) in enumerate(frames_added)}
        expected = set()
        for i, (e, s, n, term) in enumerate(frames_added):
            first_needed = index[(e, max(s - K + 1, 0))]
            last_episode = e == episode
            # window complete: 2 steps inside the episode, or it ended (terminal or closed)
            complete = s + 2 <= n or (s < n and (term or not last_episode))
            if first_needed >= oldest and complete and i >= oldest:
                expected.add((e, s))
        assert len(buf) == len(expected)
        if not expected:
            continue
        _, rows = sample_all(buf, batch_size=256, seed=episode)
        seen = set()
        for row in rows:
            e, s = decode(row["obs"])[-1]
            seen.add((e, s))
            assert decode(row["obs"]) == expected_stack(e, s)
            next_e, next_s = decode(row["next_obs"])[-1]
            assert next_e == e and decode(row["next_obs"]) == expected_stack(e, next_s)
        assert seen == expected


def test_nstep_returns_and_discounts():
    gamma = 0.5
    buf = ReplayBuffer(100, (H, W, 3), K, action_dim=2, motion_dim=2, discount=gamma, nstep=3)
    add_episode(buf, 1, 5, terminal=True, motion_dim=2)
    add_episode(buf, 2, 4, terminal=False, motion_dim=2)  # truncated
    add_episode(buf, 3, 2, terminal=False, motion_dim=2)  # open, shorter than nstep: nothing yet
    assert len(buf) == 5 + 4

    _, rows = sample_all(buf)
    seen = set()
    for row in rows:
        episode, step = decode(row["obs"])[-1]
        seen.add((episode, step))
        length = {1: 5, 2: 4}[episode]
        j = min(3, length - step)
        rewards = [100 * episode + step + i for i in range(1, j + 1)]
        assert row["reward"] == pytest.approx(sum(gamma**i * r for i, r in enumerate(rewards)))
        terminal_reached = episode == 1 and step + j == length
        assert row["discount"] == pytest.approx(0.0 if terminal_reached else gamma**j)
        assert decode(row["next_obs"]) == expected_stack(episode, step + j)
        np.testing.assert_array_equal(row["action"], [episode, step + 1])
        np.testing.assert_array_equal(row["motion"], [episode, step])  # at obs time
    assert seen == {(1, s) for s in range(5)} | {(2, s) for s in range(4)}

    # once the open episode has enough steps, its early transitions become sampleable
    buf.add(np.array([3, 3], np.float32), 303.0, frame(3, 3), False, motion=np.zeros(2))
    assert len(buf) == 5 + 4 + 1


def test_discount_zero_keeps_one_reward_and_cuts_the_bootstrap():
    buf = ReplayBuffer(100, (H, W, 3), K, action_dim=2, discount=0.0, nstep=3)
    add_episode(buf, 1, 5, terminal=False)  # truncated: would bootstrap at any other discount
    _, rows = sample_all(buf)
    for row in rows:
        episode, step = decode(row["obs"])[-1]
        assert row["reward"] == row["reward1"] == 100.0 * episode + step + 1
        assert row["discount"] == 0.0


def test_frame_stack_matches_buffer():
    rng = np.random.default_rng(3)
    episode_frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(6)]
    stacker = FrameStack(K)
    stacks = [stacker.reset(episode_frames[0])]
    stacks += [stacker.step(f) for f in episode_frames[1:]]
    assert stacks[0].shape == (3 * K, H, W) and stacks[0].dtype == np.uint8
    np.testing.assert_array_equal(
        stacks[0], np.concatenate([episode_frames[0].transpose(2, 0, 1)] * K)
    )

    buf = ReplayBuffer(50, (H, W, 3), K, action_dim=1)
    buf.add_first(episode_frames[0])
    for step, f in enumerate(episode_frames[1:], start=1):
        buf.add(np.array([step], np.float32), 0.0, f, terminal=step == 5)
    batch = buf.sample(256, np.random.default_rng(0))
    for b in range(256):
        step = int(batch["action"][b, 0]) - 1  # action into step s+1 is s+1
        np.testing.assert_array_equal(batch["obs"][b].numpy(), stacks[step])
        np.testing.assert_array_equal(batch["next_obs"][b].numpy(), stacks[step + 1])
    with pytest.raises(ValueError, match="reset"):
        FrameStack(2).step(episode_frames[0])


def test_state_dict_round_trip(tmp_path):
    def fresh():
        return ReplayBuffer(13, (H, W, 3), K, action_dim=2, motion_dim=2, discount=0.9, nstep=2)

    buf = fresh()
    for episode in range(4):
        add_episode(buf, episode, 4, terminal=episode % 2 == 0, motion_dim=2)
    buf.add_first(frame(9, 0), motion=np.zeros(2))  # an open episode survives the round trip
    np.savez(tmp_path / "replay.npz", **buf.state_dict())
    with np.load(tmp_path / "replay.npz") as data:
        state = {key: data[key] for key in data.files}
    restored = fresh()
    restored.load_state_dict(state)
    assert len(restored) == len(buf)

    for b in (buf, restored):  # both continue the open episode identically
        b.add(np.ones(2, np.float32), 1.0, frame(9, 1), False, motion=np.zeros(2))
        b.add(np.ones(2, np.float32), 1.0, frame(9, 2), False, motion=np.zeros(2))
    first = buf.sample(32, np.random.default_rng(5))
    second = restored.sample(32, np.random.default_rng(5))
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())

    wrong = ReplayBuffer(13, (H, W, 3), K, action_dim=3, motion_dim=2)
    with pytest.raises(ValueError, match="'action'"):
        wrong.load_state_dict(buf.state_dict())


def test_stored_features_are_sampled_in_place_of_frames_and_follow_the_stacks():
    buf = ReplayBuffer(100, (H, W, 3), K, action_dim=2, nstep=2, feature_dim=2)
    for episode, length in ((0, 4), (1, 3)):
        # the features of the stack ending at (episode, step) name it, so they can be checked
        buf.add_first(frame(episode, 0), features=np.array([episode, 0], np.float32))
        for step in range(1, length + 1):
            buf.add(
                np.zeros(2, np.float32),
                float(step),
                frame(episode, step),
                step == length,
                features=np.array([episode, step], np.float32),
            )
    rng = np.random.default_rng(0)
    batch = buf.sample(64, rng, features=True)
    assert set(batch) == {"obs_h", "next_obs_h", "action", "reward", "reward1", "discount"}
    for obs_h, next_h, reward1 in zip(
        batch["obs_h"], batch["next_obs_h"], batch["reward1"], strict=True
    ):
        episode, step = obs_h.tolist()
        assert next_h[0] == episode and next_h[1] in (step + 1, step + 2)  # n-step, episode-safe
        assert reward1 == step + 1  # the one-step reward, not the n-step return
    with pytest.raises(ValueError, match="features shape"):
        buf.add_first(frame(2, 0), features=np.zeros(3, np.float32))


def test_target_stats_cover_stepped_rewards_and_all_motion():
    buf = ReplayBuffer(100, (H, W, 3), K, action_dim=2, motion_dim=1)
    buf.add_first(frame(0, 0), np.array([1.0], np.float32))
    buf.add(np.zeros(2, np.float32), 2.0, frame(0, 1), False, np.array([3.0], np.float32))
    buf.add(np.zeros(2, np.float32), 4.0, frame(0, 2), True, np.array([5.0], np.float32))
    stats = buf.target_stats()
    assert stats["reward_mean"] == pytest.approx(3.0) and stats["reward_std"] == pytest.approx(1.0)
    np.testing.assert_allclose(stats["motion_mean"], [3.0])
