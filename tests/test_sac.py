"""SACAgent: updates, target networks, temperature, gradient routing, checkpoints, real encoder."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semore.actor_critic import Actor, Critic
from semore.encoder import SemoreEncoder
from semore.replay import FrameStack, ReplayBuffer
from semore.sac import SACAgent, SACConfig

K, H, W, A = 3, 16, 16, 2


class TinyEncoder(nn.Module):
    """Smallest encoder honouring the agent's contract: uint8-range (B, 3K, H, W) -> (B, repr_dim)."""

    def __init__(self, repr_dim: int = 8) -> None:
        super().__init__()
        self.repr_dim = repr_dim
        self.conv = nn.Conv2d(3 * K, 4, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, repr_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(obs.float() / 255.0))
        return torch.tanh(self.fc(self.pool(x).flatten(1)))  # (B, repr_dim)


def make_batch(batch_size=8, motion_dim=0, seed=0, height=H, width=W):
    g = torch.Generator().manual_seed(seed)
    batch = {
        "obs": torch.randint(
            0, 256, (batch_size, 3 * K, height, width), generator=g, dtype=torch.uint8
        ),
        "action": torch.rand(batch_size, A, generator=g) * 2 - 1,
        "reward": torch.rand(batch_size, generator=g),
        "discount": torch.full((batch_size,), 0.99),
        "next_obs": torch.randint(
            0, 256, (batch_size, 3 * K, height, width), generator=g, dtype=torch.uint8
        ),
        "reward1": torch.rand(batch_size, generator=g),
    }
    if motion_dim:
        batch["motion"] = torch.randn(batch_size, motion_dim, generator=g)
    return batch


def make_agent(seed=0, encoder_trainable=True, **overrides):
    torch.manual_seed(seed)
    cfg = SACConfig(hidden_dim=32, **overrides)
    return SACAgent(TinyEncoder(), A, cfg, motion_dim=3, encoder_trainable=encoder_trainable)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_update_returns_finite_metrics():
    agent = make_agent(reward_aux_weight=1.0, motion_aux_weight=0.5)
    metrics = agent.update(make_batch(motion_dim=3), step=0)
    expected = {
        "critic_loss",
        "q1",
        "q2",
        "target_q",
        "actor_loss",
        "alpha",
        "alpha_loss",
        "entropy",
    }
    assert expected | {"reward_aux_loss", "motion_aux_loss"} == set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    # the actor (and temperature) only step every actor_update_every steps
    assert "actor_loss" not in agent.update(make_batch(motion_dim=3), step=1)


def test_aux_config_errors():
    with pytest.raises(ValueError, match="motion_dim"):
        SACAgent(TinyEncoder(), A, SACConfig(motion_aux_weight=1.0), motion_dim=0)
    agent = make_agent(motion_aux_weight=1.0)
    with pytest.raises(ValueError, match="'motion'"):
        agent.update(make_batch(), step=0)
    encoder = TinyEncoder()
    del encoder.repr_dim
    with pytest.raises(ValueError, match="repr_dim"):
        SACAgent(encoder, A, SACConfig())


def test_target_critic_moves_by_exactly_tau_and_there_is_no_target_encoder():
    agent = make_agent()
    assert not hasattr(agent, "target_encoder")  # DrQ-v2: next_obs goes through the online one
    before = params(agent.target_critic)
    agent.update(make_batch(), step=1)  # 1 % target_update_every != 0: targets stay
    assert same(params(agent.target_critic), before)

    agent.update(make_batch(seed=1), step=2)
    tau = agent.cfg.critic_tau
    for new_t, online_p, old_t in zip(
        agent.target_critic.parameters(), agent.critic.parameters(), before, strict=True
    ):
        torch.testing.assert_close(new_t, (1 - tau) * old_t + tau * online_p, rtol=0, atol=1e-6)
    assert not same(params(agent.target_critic), before)


class CountingEncoder(TinyEncoder):
    """TinyEncoder that counts forward passes and how many of them built a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.with_grad = 0, 0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.with_grad += int(torch.is_grad_enabled())
        return super().forward(obs)


def test_an_update_encodes_next_obs_once_and_a_frozen_one_with_features_not_at_all():
    torch.manual_seed(0)
    encoder = CountingEncoder()
    agent = SACAgent(encoder, A, SACConfig(hidden_dim=32))
    agent.update(make_batch(), step=0)
    assert (encoder.calls, encoder.with_grad) == (2, 1)  # obs with grad, next_obs without

    frozen = SACAgent(CountingEncoder(), A, SACConfig(hidden_dim=32), encoder_trainable=False)
    frozen.update(make_batch(), step=0)  # frames: two passes, neither building a graph
    assert (frozen.encoder.calls, frozen.encoder.with_grad) == (2, 0)
    batch = make_batch()
    features = {"obs_h": torch.randn(8, 8), "next_obs_h": torch.randn(8, 8)}
    batch = {k: v for k, v in batch.items() if k not in ("obs", "next_obs")} | features
    encoder_before = params(frozen.encoder)
    frozen.update(batch, step=1)
    assert frozen.encoder.calls == 2  # cached features: no encoder pass at all
    assert same(params(frozen.encoder), encoder_before)


class FixedTargets(nn.Module):
    """Target critic stand-in with known Q values (q1, q2), whatever (h, action)."""

    def __init__(self, q1: list[float], q2: list[float]) -> None:
        super().__init__()
        self.q1, self.q2 = torch.tensor(q1), torch.tensor(q2)

    def forward(self, h, action):
        return self.q1, self.q2


def fixed_policy(log_prob: list[float]):
    def sample(h):
        return torch.zeros(len(log_prob), A), torch.tensor(log_prob)

    return sample


def test_td_target_with_known_numbers():
    agent = make_agent(init_temperature=0.1)
    agent.target_critic = FixedTargets([5.0, 1.0, 7.0], [3.0, 4.0, 2.0])
    agent.actor.sample = fixed_policy([-1.0, 2.0, 0.5])
    reward = torch.tensor([1.0, 2.0, 0.5])
    # 3-step transitions at gamma 0.9: gamma^3 kept, except the second, which hit a terminal.
    discount = torch.tensor([0.9**3, 0.0, 0.9**3])
    target = agent.td_target(reward, discount, torch.zeros(3, agent.repr_dim))
    # V = min(q1, q2) - alpha * log pi = [3 + 0.1, 1 - 0.2, 2 - 0.05]
    expected = [1.0 + 0.729 * 3.1, 2.0, 0.5 + 0.729 * 1.95]
    torch.testing.assert_close(target, torch.tensor(expected))


def test_discount_zero_cuts_the_bootstrap_end_to_end():
    # gamma 0 in the buffer: the critic regresses the one-step reward, whatever Q says next.
    agent = make_agent(init_temperature=0.1)
    agent.target_critic = FixedTargets([1e6] * 4, [2e6] * 4)
    buf = ReplayBuffer(50, (H, W, 3), K, action_dim=A, discount=0.0, nstep=3)
    buf.add_first(np.zeros((H, W, 3), np.uint8))
    for t in range(6):
        buf.add(np.zeros(A, np.float32), float(t + 1), np.zeros((H, W, 3), np.uint8), False)
    batch = buf.sample(4, np.random.default_rng(0))
    metrics = agent.update(batch, step=1)
    assert metrics["target_q"] == pytest.approx(float(batch["reward1"].mean()))
    assert torch.equal(batch["discount"], torch.zeros(4))


def test_act_shape_and_range():
    agent = make_agent()
    obs = np.random.default_rng(0).integers(0, 256, (3 * K, H, W), dtype=np.uint8)
    for sample in (True, False):
        action = agent.act(obs, sample=sample)
        assert action.shape == (A,) and action.dtype == np.float32
        assert np.all(np.abs(action) <= 1.0)
    np.testing.assert_array_equal(agent.act(obs, sample=False), agent.act(obs, sample=False))
    assert agent.training  # act() restores the training mode
    with pytest.raises(ValueError, match="3K"):
        agent.act(obs[None], sample=False)


def test_actor_has_its_own_projection_of_the_detached_features():
    actor = Actor(repr_dim=4, action_dim=2, hidden_dim=8, feature_dim=6)
    assert isinstance(actor.proj[0], nn.Linear) and actor.proj[0].out_features == 6
    assert isinstance(actor.proj[1], nn.LayerNorm)
    h = torch.randn(5, 4, requires_grad=True)
    actor(h)[0].sum().backward()
    assert h.grad is None  # the representation is read detached
    assert actor.proj[0].weight.grad is not None


def test_actor_sample_log_prob_matches_change_of_variables():
    actor = Actor(repr_dim=4, action_dim=2, hidden_dim=8, feature_dim=6)
    h = torch.randn(5, 4)
    torch.manual_seed(0)
    action, log_prob = actor.sample(h)
    torch.manual_seed(0)
    mu, log_std = actor(h)
    u = mu + log_std.exp() * torch.randn_like(mu)
    base = torch.distributions.Normal(mu, log_std.exp()).log_prob(u).sum(-1)
    expected = base - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, expected, rtol=1e-4, atol=1e-4)
    assert ((log_std >= -10) & (log_std <= 2)).all()
    q1, q2 = Critic(4, 2, 8)(h, action)
    assert q1.shape == q2.shape == (5,)


def test_temperature_positive_and_learned():
    agent = make_agent()
    assert agent.alpha.item() == pytest.approx(0.1)
    for step in range(4):
        metrics = agent.update(make_batch(seed=step), step=step)
    assert metrics["alpha"] > 0
    assert agent.alpha.item() != pytest.approx(0.1, abs=1e-7)


def test_entropy_target_scales_with_the_action_dims_and_moves_the_temperature():
    assert make_agent().target_entropy == -float(A)  # SAC's default, -1 per dimension
    h = torch.randn(16, make_agent().repr_dim)
    alphas = {}
    for per_dim in (-50.0, 5.0):  # far below / far above any entropy the policy has
        agent = make_agent(target_entropy_per_dim=per_dim)
        assert agent.target_entropy == per_dim * A
        for _ in range(3):
            agent.update_actor(h)
        alphas[per_dim] = agent.alpha.item()
    # A low target lets the temperature fall; an unreachable one drives it up.
    assert alphas[-50.0] < 0.1 < alphas[5.0]


def test_actor_gradients_do_not_reach_encoder_but_critic_gradients_do():
    agent = make_agent()
    batch = make_batch()
    obs = batch["obs"].float()
    encoder_before = params(agent.encoder)

    agent.encoder.zero_grad(set_to_none=True)
    agent.update_actor(agent.encoder(obs))
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert same(params(agent.encoder), encoder_before)

    with torch.no_grad():
        next_h = agent.encoder(batch["next_obs"].float())
    agent.update_critic(
        agent.encoder(obs), batch["action"], batch["reward"], batch["discount"], next_h
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.encoder.parameters())
    assert not same(params(agent.encoder), encoder_before)


def test_a_frozen_encoder_stays_fixed_until_it_is_made_trainable():
    agent = make_agent(encoder_trainable=False, reward_aux_weight=1.0)
    encoder_before, critic_before = params(agent.encoder), params(agent.critic)
    for step in range(3):
        agent.update(make_batch(seed=step), step=step)
    assert same(params(agent.encoder), encoder_before)
    assert not same(params(agent.critic), critic_before)
    agent.set_encoder_trainable(True)  # the end of a warm-up
    agent.update(make_batch(seed=5), step=3)
    assert not same(params(agent.encoder), encoder_before)


def test_auxiliary_targets_are_standardised_with_the_set_statistics():
    agent = make_agent(reward_aux_weight=1.0, motion_aux_weight=1.0)
    batch = make_batch(motion_dim=3)
    agent.set_target_stats(2.0, 4.0, np.array([1.0, 0.0, -1.0]), np.array([2.0, 0.0, 0.5]))
    torch.testing.assert_close(agent.motion_std, torch.tensor([2.0, 1.0, 0.5]))  # 0 -> 1
    h = agent.encoder(agent.aug(batch["obs"].float()))
    with torch.no_grad():
        expected_reward = F.mse_loss(
            agent.reward_head(torch.cat([h, batch["action"]], -1)).squeeze(-1),
            (batch["reward1"] - 2.0) / 4.0,
        ).item()
        expected_motion = F.mse_loss(
            agent.motion_head(h),
            (batch["motion"] - torch.tensor([1.0, 0.0, -1.0])) / torch.tensor([2.0, 1.0, 0.5]),
        ).item()
        next_h = agent.encoder(batch["next_obs"].float())
    metrics = agent.update_critic(
        h,
        batch["action"],
        batch["reward"],
        batch["discount"],
        next_h,
        batch["reward1"],
        batch["motion"],
    )
    assert metrics["reward_aux_loss"] == pytest.approx(expected_reward, rel=1e-5)
    assert metrics["motion_aux_loss"] == pytest.approx(expected_motion, rel=1e-5)


def test_agent_uses_the_passed_encoder_weights():
    torch.manual_seed(123)
    encoder = TinyEncoder()
    weights = {k: v.clone() for k, v in encoder.state_dict().items()}
    agent = SACAgent(encoder, A, SACConfig(hidden_dim=32))
    assert agent.encoder is encoder
    for key, value in agent.encoder.state_dict().items():
        assert torch.equal(value, weights[key])


def test_checkpoint_restore_resumes_exactly(tmp_path):
    agent = make_agent(seed=0, reward_aux_weight=1.0)
    for step in range(3):
        agent.update(make_batch(seed=step), step=step)
    torch.save(agent.checkpoint(), tmp_path / "agent.pt")

    restored = make_agent(seed=1, reward_aux_weight=1.0)  # different initial weights
    restored.restore(torch.load(tmp_path / "agent.pt", weights_only=True))
    obs = np.random.default_rng(0).integers(0, 256, (3 * K, H, W), dtype=np.uint8)
    np.testing.assert_array_equal(agent.act(obs, sample=False), restored.act(obs, sample=False))
    for name in ("critic_opt", "encoder_opt", "actor_opt", "alpha_opt"):
        saved = getattr(agent, name).state_dict()["state"]
        loaded = getattr(restored, name).state_dict()["state"]
        assert saved.keys() == loaded.keys() and len(saved) > 0
        for index in saved:
            for key, value in saved[index].items():
                assert torch.equal(value, loaded[index][key])

    # the next update is identical, so training resumes exactly
    metrics = []
    for a in (agent, restored):
        torch.manual_seed(7)
        metrics.append(a.update(make_batch(seed=9), step=4))
    assert metrics[0] == metrics[1]
    assert same(params(agent), params(restored))

    without_head = make_agent()
    with pytest.raises(ValueError, match="reward_head"):
        without_head.restore(agent.checkpoint())


def test_real_semore_encoder_with_replay_buffer():
    torch.manual_seed(0)
    size = 32
    encoder = SemoreEncoder(frame_stack=K, image_height=size, image_width=size, repr_dim=16)
    agent = SACAgent(encoder, A, SACConfig(hidden_dim=32, reward_aux_weight=1.0))
    encoder_before = params(encoder)

    # online loop in miniature: FrameStack for acting, ReplayBuffer for learning
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(64, (size, size, 3), K, action_dim=A)
    stacker = FrameStack(K)
    frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    obs = stacker.reset(frame)
    buf.add_first(frame)
    for step in range(12):
        action = agent.act(obs, sample=True)
        assert action.shape == (A,) and np.all(np.abs(action) <= 1)
        frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        obs = stacker.step(frame)
        buf.add(action, float(rng.random()), frame, terminal=step == 11)

    for step in range(2):
        metrics = agent.update(buf.sample(4, rng), step=step)
        assert all(math.isfinite(v) for v in metrics.values())
    assert not same(params(encoder), encoder_before)


def test_action_change_is_the_squared_distance_of_the_deterministic_actions():
    agent = make_agent(action_smoothness_weight=1.0)
    h, next_h = torch.randn(6, agent.repr_dim), torch.randn(6, agent.repr_dim)
    with torch.no_grad():
        now = torch.tanh(agent.actor(h)[0])
        later = torch.tanh(agent.actor(next_h)[0])
        expected = ((now - later) ** 2).sum(-1).mean()
        assert agent.action_change(h, next_h).item() == pytest.approx(expected.item(), rel=1e-5)
        assert agent.action_change(h, h).item() == pytest.approx(0.0, abs=1e-7)


def test_action_smoothness_pulls_consecutive_actions_together_and_zero_is_plain_sac():
    h, next_h = torch.randn(32, 8), torch.randn(32, 8)
    change = {}
    for weight in (0.0, 50.0):
        agent = make_agent(action_smoothness_weight=weight)
        for _ in range(30):
            metrics = agent.update_actor(h, next_h)
        assert ("action_change" in metrics) == (weight > 0)
        with torch.no_grad():
            change[weight] = agent.action_change(h, next_h).item()
    assert change[50.0] < 0.1 * change[0.0]
    # Weight 0 does not read next_h at all: the same updates as without it.
    actors = []
    for weight, with_next in ((None, False), (0.0, True)):
        agent = make_agent() if weight is None else make_agent(action_smoothness_weight=weight)
        for _ in range(3):  # the policy's noise comes from the global stream seeded above
            agent.update_actor(h, next_h if with_next else None)
        actors.append(params(agent.actor))
    assert same(*actors)


def test_action_smoothness_needs_next_h_and_a_non_negative_weight():
    with pytest.raises(
        ValueError, match=r"action_smoothness_weight is -1.0: expected a number in \[0, 1e6\]"
    ):
        SACConfig(action_smoothness_weight=-1.0)
    with pytest.raises(ValueError, match="needs next_h"):
        make_agent(action_smoothness_weight=1.0).update_actor(torch.randn(4, 8))


def test_action_smoothness_runs_on_cached_features_through_update():
    agent = make_agent(encoder_trainable=False, action_smoothness_weight=5.0)
    batch = make_batch()
    with torch.no_grad():  # a frozen encoder's features, as the loop caches them
        batch["obs_h"] = agent.encoder(batch.pop("obs").float())
        batch["next_obs_h"] = agent.encoder(batch.pop("next_obs").float())
    expected = agent.action_change(batch["obs_h"], batch["next_obs_h"]).item()
    metrics = agent.update(batch, step=0)  # step 0: the actor updates (actor_update_every 2)
    assert metrics["action_change"] == pytest.approx(expected, rel=1e-5)


def test_action_smoothness_covers_only_the_named_dimensions():
    h, next_h = torch.randn(6, 8), torch.randn(6, 8)
    every = make_agent(action_smoothness_weight=1.0)
    steer = make_agent(action_smoothness_weight=1.0, action_smoothness_dims=[1])
    with torch.no_grad():  # the same weights (same seed): only the dimensions differ
        change = (torch.tanh(every.actor(h)[0]) - torch.tanh(every.actor(next_h)[0])) ** 2
        assert every.action_change(h, next_h).item() == pytest.approx(
            change.sum(-1).mean().item(), rel=1e-5
        )
        assert steer.action_change(h, next_h).item() == pytest.approx(
            change[:, 1].mean().item(), rel=1e-5
        )
    with pytest.raises(ValueError, match="action_smoothness_dims is \\[1, 1\\]"):
        SACConfig(action_smoothness_dims=[1, 1])
    with pytest.raises(ValueError, match="action_smoothness_dims=\\[2\\] with action_dim=2"):
        make_agent(action_smoothness_dims=[2])
