"""Soft actor-critic with DrQ augmentation on top of any image encoder.

The encoder is trained by the critic (and optional auxiliary losses) when it is trainable,
never by the actor, which reads the detached representation through a projection of its own
(DrQ / SAC-AE). As in DrQ-v2, the TD target encodes ``next_obs`` once, with the online encoder
and no gradient, instead of keeping a target copy of the encoder: one encoder pass less per
update. A frozen encoder's features can be computed once per stored observation and passed
in the batch (``obs_h`` / ``next_obs_h``): updates then touch only the MLP heads. Cached
token grids of frozen lower layers (``obs_tokens``, :mod:`semore.trunk_cache`) run only the
layers above them; a guide (``SACAgent.guide``, :mod:`semore.guide`) adds the pretraining
terms to the critic loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.augment import RandomShift
from semore.checks import (
    MAX_ACTION_DIM,
    MAX_AUG_PAD,
    MAX_LR,
    MAX_STEPS,
    MAX_WEIGHT,
    MAX_WIDTH,
    Float,
    Int,
    ListOf,
    Opt,
    check_fields,
)
from semore.layers import mlp, orthogonal_init
from semore.trunk_cache import encode_cached_batch


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, for parameters (buffers are left as they are)."""
    for target_param, online_param in zip(target.parameters(), online.parameters(), strict=True):
        target_param.lerp_(online_param, tau)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was_training)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy over its own projection of a representation h.

    The projection (Linear + LayerNorm + tanh, as DrQ's actor trunk) lets the actor re-weight
    the detached features instead of reading the critic's representation as is.
    """

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        hidden_dim: int,
        feature_dim: int,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.proj = nn.Sequential(
            nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh()
        )
        self.trunk = mlp(feature_dim, hidden_dim, 2 * action_dim, num_hidden_layers=2)
        self.apply(orthogonal_init)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Return (mu, log_std) of the pre-tanh Gaussian, each (B, action_dim)."""
        mu, log_std = self.trunk(self.proj(h.detach())).chunk(2, dim=-1)
        # Squash smoothly into [min, max] instead of clamping, so log_std keeps a gradient.
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mu, log_std

    def sample(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action in (-1, 1) (B, A) and its log-probability (B,)."""
        mu, log_std = self(h)
        noise = torch.randn_like(mu)
        pre_tanh = mu + log_std.exp() * noise
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # Change of variables: log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), log_prob


class Critic(nn.Module):
    """Twin Q networks on (h, action); ``forward`` returns (q1, q2), each (B,)."""

    def __init__(self, repr_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.q1 = mlp(repr_dim + action_dim, hidden_dim, 1, num_hidden_layers=2)
        self.q2 = mlp(repr_dim + action_dim, hidden_dim, 1, num_hidden_layers=2)
        self.apply(orthogonal_init)

    def forward(self, h: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([h, action], dim=-1)  # (B, repr_dim + A)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


@dataclass
class SACConfig:
    # 256 instead of SAC-AE's 1024: the heads run on CPU next to the encoder, and h is only 50-d.
    hidden_dim: int = 256
    # DrQ's actor trunk width (the actor's own projection of the detached features).
    actor_feature_dim: int = 50
    # SAC-AE / DrQ's discount: an effective horizon 1 / (1 - 0.99) = 100 agent steps, 20 s of
    # 5 Hz control, the length of a quickstart / study highway episode.
    discount: float = 0.99
    # SAC-AE / DrQ learning rates for pixel SAC with batch sizes of 128-512.
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    # DrQ's temperature rate: SAC-AE's 1e-4 moves log(alpha) only ~0.03 in a 2k-step run, so
    # exploration after the seed steps was almost nil; with Adam's short memory (beta 0.5).
    alpha_lr: float = 1e-3
    alpha_beta: float = 0.5
    # SAC-AE: the target Q heads track at 1% per target update.
    critic_tau: float = 0.01
    # SAC-AE: the actor and the targets change every other update, which steadies Q learning.
    actor_update_every: int = 2
    target_update_every: int = 2
    # SAC-AE: a low start keeps early exploration from drowning the (small) driving reward.
    init_temperature: float = 0.1
    # SAC's entropy target, -1 nat per action dimension. On highway that holds the policy too
    # random: the temperature climbs (0.55 at 3000 steps) and episodes end early off the road;
    # -4 per dimension scored 0.46 against 0.13 at 750 steps and 0.44 against 0.26 at 3000
    # (frozen Semore, mean of 2 tuning seeds, benchmarks/results/tune_learner/), so the
    # matched study sets -4. The default stays SAC's, which the committed quickstart numbers
    # were made with.
    target_entropy_per_dim: float = -1.0
    # DrQ: +-4 px shifts for 84 px frames (not applied to cached frozen features).
    aug_pad: int = 4
    # 0 disables the online auxiliary heads (plain SAC); > 0 keeps h reward-/motion-predictive.
    # Their targets (one-step reward, motion) are standardised with statistics of the seed
    # steps, the same way whatever the encoder (see SACAgent.set_target_stats).
    reward_aux_weight: float = 0.0
    motion_aux_weight: float = 0.0
    # CAPS' temporal smoothness (Mysore et al. 2021) in the actor loss: weight x the squared
    # distance between the deterministic actions of a batch's obs and next_obs. A policy
    # driven only by the critic's action gradient goes bang-bang: trained highway agents
    # alternated full steering and full throttle/brake from step to step (62% sign changes,
    # mean |steer| 0.37 against the expert's 0.005) although the reward charges |steer|,
    # because the critic's action gradient (|dQ/da| ~5-16 at Q ~280) drowns that 1-per-step
    # cost. 0 is plain SAC.
    action_smoothness_weight: float = 0.0
    # The action dimensions the smoothness term covers; null: all. At 5 on every dimension
    # some highway runs locked into full throttle at 40 m/s and crashed: a term that also
    # charges changing the acceleration charges braking for the car ahead. [1] is highway's
    # steering alone.
    action_smoothness_dims: list[int] | None = None

    def __post_init__(self) -> None:
        width, rate, weight = (
            Int(1, MAX_WIDTH),
            Float(0.0, MAX_LR, low_open=True),
            Float(0, MAX_WEIGHT),
        )
        check_fields(
            self,
            hidden_dim=width,
            actor_feature_dim=width,
            discount=Float(0.0, 1.0),
            actor_lr=rate,
            critic_lr=rate,
            alpha_lr=rate,
            alpha_beta=Float(0.0, 0.999),  # Adam refuses a beta of 1
            critic_tau=Float(0.0, 1.0),
            actor_update_every=Int(1, MAX_STEPS),
            target_update_every=Int(1, MAX_STEPS),
            init_temperature=Float(0.0, MAX_WEIGHT, low_open=True),
            target_entropy_per_dim=Float(-MAX_WEIGHT, MAX_WEIGHT),
            aug_pad=Int(0, MAX_AUG_PAD),
            reward_aux_weight=weight,
            motion_aux_weight=weight,
            action_smoothness_weight=weight,
            action_smoothness_dims=Opt(ListOf(Int(0, MAX_ACTION_DIM - 1), 1, unique=True)),
        )


class SACAgent(nn.Module):
    """SAC + DrQ agent around ``encoder`` (any module with an int ``repr_dim`` mapping (B, 3K, H, W)
    uint8-range images to (B, repr_dim)). The passed encoder object is used as is (not copied),
    so a pretrained encoder's weights are the starting point. ``encoder_trainable`` False keeps
    it fixed (:meth:`set_encoder_trainable` switches later, e.g. after a warm-up). ``encoder_lr``
    is the encoder's rate when it trains; its caller picks it per regime (the fine-tune config's
    ``encoder_lr``); 1e-3 is DrQ's rate for an encoder learned from scratch. Move with
    ``.to(device)`` before the first update; optimiser state then lives on the same device.
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        cfg: SACConfig,
        motion_dim: int = 0,
        encoder_trainable: bool = True,
        encoder_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if not encoder_lr > 0:
            raise ValueError(f"SACAgent encoder_lr={encoder_lr!r}; expected > 0")
        repr_dim = getattr(encoder, "repr_dim", None)
        if not isinstance(repr_dim, int) or repr_dim < 1:
            raise ValueError(
                f"SACAgent encoder {type(encoder).__name__} has repr_dim={repr_dim!r}; expected an int >= 1"
            )
        dims = cfg.action_smoothness_dims
        if dims is not None and max(dims) >= action_dim:
            raise ValueError(
                f"SACAgent action_smoothness_dims={dims} with action_dim={action_dim}; "
                f"expected indices < {action_dim}"
            )
        if cfg.motion_aux_weight > 0 and motion_dim < 1:
            raise ValueError(
                f"SACAgent motion_aux_weight={cfg.motion_aux_weight} with motion_dim={motion_dim}; "
                "expected motion_dim >= 1 (or motion_aux_weight=0)"
            )
        self.cfg = cfg
        self.action_dim = action_dim
        self.repr_dim = repr_dim
        self.target_entropy = cfg.target_entropy_per_dim * float(action_dim)

        self.encoder = encoder
        self.critic = Critic(repr_dim, action_dim, cfg.hidden_dim)
        self.target_critic = copy.deepcopy(self.critic)
        self.target_critic.requires_grad_(False)
        self.actor = Actor(repr_dim, action_dim, cfg.hidden_dim, cfg.actor_feature_dim)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.aug = RandomShift(cfg.aug_pad)
        self.reward_head = None
        if cfg.reward_aux_weight > 0:
            self.reward_head = mlp(repr_dim + action_dim, cfg.hidden_dim, 1, num_hidden_layers=2)
        self.motion_head = None
        if cfg.motion_aux_weight > 0:
            self.motion_head = mlp(repr_dim, cfg.hidden_dim, motion_dim, num_hidden_layers=2)
        # Standardisation of the auxiliary targets (set once from the seed steps; saved).
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.register_buffer("motion_mean", torch.zeros(motion_dim))
        self.register_buffer("motion_std", torch.ones(motion_dim))

        # The auxiliary heads share the critic's optimiser: they are stepped by the same loss.
        critic_params = list(self.critic.parameters())
        for head in (self.reward_head, self.motion_head):
            if head is not None:
                critic_params += list(head.parameters())
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        # Created even while frozen, so checkpoints have the same optimisers in every regime.
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=encoder_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_opt = torch.optim.Adam(
            [self.log_alpha], lr=cfg.alpha_lr, betas=(cfg.alpha_beta, 0.999)
        )
        self.encoder_trainable = True
        self.set_encoder_trainable(encoder_trainable)
        # encoder_mode "guided": a semore.guide.PretrainGuide whose term joins the critic loss.
        self.guide: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Let the critic loss train the encoder (True) or keep it fixed (False)."""
        self.encoder_trainable = bool(trainable)
        self.encoder.requires_grad_(self.encoder_trainable)

    def set_target_stats(
        self, reward_mean: float, reward_std: float, motion_mean: np.ndarray, motion_std: np.ndarray
    ) -> None:
        """Standardisation of the auxiliary targets; a std of 0 is treated as 1."""
        self.reward_mean.fill_(float(reward_mean))
        self.reward_std.fill_(float(reward_std) if reward_std > 1e-8 else 1.0)
        std = np.where(np.asarray(motion_std) > 1e-8, motion_std, 1.0)
        self.motion_mean.copy_(torch.as_tensor(np.asarray(motion_mean), dtype=torch.float32))
        self.motion_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    @torch.no_grad()
    def features(self, obs: np.ndarray) -> np.ndarray:
        """The encoder's representation (repr_dim,) float32 of one stacked observation (3K, H, W)."""
        if obs.ndim != 3:
            raise ValueError(f"SACAgent obs shape {obs.shape}; expected (3K, H, W)")
        with eval_mode(self.encoder):
            x = torch.as_tensor(obs, device=self.device).unsqueeze(0).float()  # (1, 3K, H, W)
            return self.encoder(x)[0].float().cpu().numpy()

    @torch.no_grad()
    def act_on_features(self, h: np.ndarray, sample: bool) -> np.ndarray:
        """Action (action_dim,) float32 in [-1, 1] for one representation (repr_dim,)."""
        with eval_mode(self.actor):
            mu, log_std = self.actor(torch.as_tensor(h, device=self.device).unsqueeze(0).float())
            pre_tanh = (mu + log_std.exp() * torch.randn_like(mu)) if sample else mu
        return torch.tanh(pre_tanh)[0].float().cpu().numpy()

    def act(self, obs: np.ndarray, sample: bool) -> np.ndarray:
        """Action (action_dim,) float32 in [-1, 1] for one stacked observation (3K, H, W) uint8."""
        return self.act_on_features(self.features(obs), sample)

    @torch.no_grad()
    def td_target(self, reward: Tensor, discount: Tensor, next_h: Tensor) -> Tensor:
        """Soft TD target (B,): ``reward + discount * (min target Q - alpha * log pi)`` at a
        next action sampled from the policy. ``discount`` holds gamma^n, 0 at a terminal (see
        ReplayBuffer), so it alone decides how much of the bootstrap is kept."""
        next_action, next_log_prob = self.actor.sample(next_h)
        target_q1, target_q2 = self.target_critic(next_h, next_action)
        target_v = torch.min(target_q1, target_q2) - self.alpha * next_log_prob
        return reward + discount * target_v

    def update_critic(
        self,
        h: Tensor,
        action: Tensor,
        reward: Tensor,
        discount: Tensor,
        next_h: Tensor,
        reward1: Tensor | None = None,
        motion: Tensor | None = None,
    ) -> dict[str, float]:
        """One step on the critic, the encoder (through h, when trainable) and the aux heads.

        ``reward`` is the (n-step) return of the TD target; ``reward1`` the one-step reward the
        reward head predicts, as in pretraining.
        """
        target_q = self.td_target(reward, discount, next_h)
        q1, q2 = self.critic(h, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        loss = critic_loss
        metrics = {
            "critic_loss": critic_loss.item(),
            "q1": q1.mean().item(),
            "q2": q2.mean().item(),
            "target_q": target_q.mean().item(),
        }
        if self.reward_head is not None:
            if reward1 is None:
                raise ValueError("SACAgent batch has no 'reward1'; expected (B,) one-step rewards")
            target = (reward1 - self.reward_mean) / self.reward_std
            predicted = self.reward_head(torch.cat([h, action], dim=-1)).squeeze(-1)
            reward_loss = F.mse_loss(predicted, target)
            loss = loss + self.cfg.reward_aux_weight * reward_loss
            metrics["reward_aux_loss"] = reward_loss.item()
        if self.motion_head is not None:
            if motion is None:
                raise ValueError(
                    "SACAgent batch has no 'motion'; expected (B, motion_dim) targets when "
                    "motion_aux_weight > 0"
                )
            target = (motion - self.motion_mean) / self.motion_std
            motion_loss = F.mse_loss(self.motion_head(h), target)
            loss = loss + self.cfg.motion_aux_weight * motion_loss
            metrics["motion_aux_loss"] = motion_loss.item()

        guide_loss = self.guide.term() if self.guide is not None else None
        if guide_loss is not None:  # one backward and one encoder step for RL and the guide
            loss = loss + guide_loss
            metrics.update(self.guide.metrics)

        self.critic_opt.zero_grad(set_to_none=True)
        self.encoder_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        if self.encoder_trainable:
            self.encoder_opt.step()
        if guide_loss is not None:
            self.guide.step()
        return metrics

    def update_actor(self, h: Tensor, next_h: Tensor | None = None) -> dict[str, float]:
        """One step on the actor and the temperature; no gradient reaches the encoder.

        ``next_h`` (the batch's next observations) is needed when the smoothness term is on."""
        h = h.detach()  # the encoder is shaped by the critic and auxiliary losses only
        action, log_prob = self.actor.sample(h)
        q1, q2 = self.critic(h, action)
        actor_loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean()
        metrics = {}
        if self.cfg.action_smoothness_weight > 0:
            if next_h is None:
                raise ValueError(
                    "SACAgent.update_actor needs next_h when action_smoothness_weight > 0"
                )
            smoothness = self.action_change(h, next_h.detach())
            actor_loss = actor_loss + self.cfg.action_smoothness_weight * smoothness
            metrics["action_change"] = smoothness.item()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()  # also fills critic grads; update_critic clears them before use
        self.actor_opt.step()

        alpha_loss = (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {
            "actor_loss": actor_loss.item(),
            "alpha_loss": alpha_loss.item(),
            "entropy": -log_prob.mean().item(),
            **metrics,
        }

    def action_change(self, h: Tensor, next_h: Tensor) -> Tensor:
        """The squared distance between the deterministic actions at h and next_h (each
        (B, repr_dim)) over ``action_smoothness_dims``, summed over them and averaged over B."""
        both = self.actor(torch.cat([h, next_h]))[0]  # (2B, A) pre-tanh means, one pass
        now, later = torch.tanh(both).chunk(2)
        change = (now - later).pow(2)  # (B, A)
        if self.cfg.action_smoothness_dims is not None:
            change = change[:, list(self.cfg.action_smoothness_dims)]
        return change.sum(-1).mean()

    def update_targets(self) -> None:
        soft_update(self.target_critic, self.critic, self.cfg.critic_tau)

    def encode_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(h, next_h) of a batch: cached features as given, else DrQ-augmented frames encoded
        (``h`` with gradient when the encoder is trainable, ``next_h`` never)."""
        if "obs_h" in batch:
            return batch["obs_h"].float(), batch["next_obs_h"].float()
        if "obs_tokens" in batch:  # a frozen trunk's cached tokens, unshifted (semore.trunk_cache)
            return encode_cached_batch(self.encoder, batch, self.encoder_trainable)
        # DrQ: an independent random shift of obs and next_obs.
        obs = self.aug(batch["obs"].float())  # (B, 3K, H, W) float, 0..255
        next_obs = self.aug(batch["next_obs"].float())
        with torch.set_grad_enabled(self.encoder_trainable):
            h = self.encoder(obs)  # (B, repr_dim)
        with torch.no_grad():
            next_h = self.encoder(next_obs)  # one pass: the TD target and the next action
        return h, next_h

    def update(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        """One SAC step on a replay batch (see :class:`semore.replay.ReplayBuffer` for keys).

        "discount" is gamma^n, or 0 when the episode terminated within the n steps.
        """
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        h, next_h = self.encode_batch(batch)
        metrics = self.update_critic(
            h,
            batch["action"].float(),
            batch["reward"].float(),
            batch["discount"].float(),
            next_h,
            batch["reward1"].float() if "reward1" in batch else None,
            batch["motion"].float() if "motion" in batch else None,
        )
        if step % self.cfg.actor_update_every == 0:
            metrics.update(self.update_actor(h, next_h))
        if step % self.cfg.target_update_every == 0:
            self.update_targets()
        metrics["alpha"] = self.alpha.item()
        return metrics

    def checkpoint(self) -> dict:
        """Copy of the networks, temperature and optimiser states (for exact resume)."""
        optimizers = {name: opt.state_dict() for name, opt in self._optimizers().items()}
        return copy.deepcopy({"agent": self.state_dict(), "optimizers": optimizers})

    def restore(self, checkpoint: dict) -> None:
        """Load a :meth:`checkpoint` from an agent built with the same encoder type and config."""
        saved = checkpoint["optimizers"]
        if set(saved) != set(self._optimizers()):
            raise ValueError(
                f"SACAgent checkpoint has optimisers {sorted(saved)}; expected "
                f"{sorted(self._optimizers())}"
            )
        try:
            self.load_state_dict(checkpoint["agent"])
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[-1].strip()
            raise ValueError(
                f"SACAgent checkpoint does not match this agent ({first_line}); expected the same "
                "encoder type, action_dim, motion_dim and SACConfig"
            ) from err
        for name, opt in self._optimizers().items():
            opt.load_state_dict(saved[name])

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "critic": self.critic_opt,
            "encoder": self.encoder_opt,
            "actor": self.actor_opt,
            "alpha": self.alpha_opt,
            **({"guide": self.guide.opt} if self.guide is not None else {}),
        }
