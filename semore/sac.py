"""Soft actor-critic with DrQ augmentation on top of any image encoder.

The encoder is trained by the critic (and optional auxiliary losses) when it is trainable,
never by the actor, which reads the detached representation through a projection of its own
(DrQ / SAC-AE). As in DrQ-v2, the TD target encodes ``next_obs`` once, with the online encoder
and no gradient, instead of keeping a target copy of the encoder: one encoder pass less per
update. A frozen encoder's features can be computed once per stored observation and passed
in the batch (``obs_h`` / ``next_obs_h``): updates then touch only the MLP heads. Cached
token grids of frozen lower layers (``obs_tokens``, :mod:`semore.trunk_cache`) run only the
layers above them; a guide (``SACAgent.guide``, :mod:`semore.guide`) adds the pretraining
terms to the critic loss. The networks are in :mod:`semore.actor_critic`, the
hyper-parameters in :mod:`semore.sac_config`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semore.actor_critic import Actor, Critic, eval_mode, soft_update
from semore.augment import RandomShift
from semore.guide import PretrainGuide
from semore.layers import mlp
from semore.sac_config import SACConfig
from semore.trunk_cache import encode_cached_batch

# Builds a guide (encoder_mode "guided") from the agent's encoder; see SACAgent.
GuideBuilder = Callable[[nn.Module], PretrainGuide]


class SACAgent(nn.Module):
    """SAC + DrQ agent around ``encoder`` (any module with an int ``repr_dim`` mapping (B, 3K, H, W)
    uint8-range images to (B, repr_dim)). The passed encoder object is used as is (not copied),
    so a pretrained encoder's weights are the starting point. ``encoder_trainable`` False keeps
    it fixed (:meth:`set_encoder_trainable` switches later, e.g. after a warm-up). ``encoder_lr``
    is the encoder's rate when it trains; its caller picks it per regime (the fine-tune config's
    ``encoder_lr``); 1e-3 is DrQ's rate for an encoder learned from scratch. ``guide`` builds
    the guide of encoder_mode "guided" from the encoder (:class:`~semore.guide.PretrainGuide`,
    whose term joins the critic loss); it is called last, so the guide's heads draw their
    initial weights after the agent's networks. Move with ``.to(device)`` before the first
    update; optimiser state then lives on the same device.
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        cfg: SACConfig,
        motion_dim: int = 0,
        encoder_trainable: bool = True,
        encoder_lr: float = 1e-3,
        guide: GuideBuilder | None = None,
    ) -> None:
        super().__init__()
        _check_agent_args(encoder, action_dim, cfg, motion_dim, encoder_lr)
        self.cfg = cfg
        self.action_dim = action_dim
        self.repr_dim = repr_dim = encoder.repr_dim
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
        self._make_optimizers(encoder_lr)
        self.encoder_trainable = True
        self.set_encoder_trainable(encoder_trainable)
        self.guide: PretrainGuide | None = guide(encoder) if guide is not None else None

    def _make_optimizers(self, encoder_lr: float) -> None:
        cfg = self.cfg
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


def _check_agent_args(
    encoder: nn.Module, action_dim: int, cfg: SACConfig, motion_dim: int, encoder_lr: float
) -> None:
    """ValueError naming the argument of :class:`SACAgent` that does not fit."""
    if not encoder_lr > 0:
        raise ValueError(f"SACAgent encoder_lr={encoder_lr!r}; expected > 0")
    repr_dim = getattr(encoder, "repr_dim", None)
    if not isinstance(repr_dim, int) or repr_dim < 1:
        raise ValueError(
            f"SACAgent encoder {type(encoder).__name__} has repr_dim={repr_dim!r}; "
            "expected an int >= 1"
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
