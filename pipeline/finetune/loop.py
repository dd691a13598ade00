"""The online SAC loop of ``semore-finetune`` (drqv2 / CleanRL style), with exact resume.

Steps are *agent* steps (one policy decision = ``action_repeat`` simulator steps). The
loop acts (uniformly at random for the first ``num_seed_steps``), stores the transition,
updates the agent every ``update_every`` steps once the seed steps are done, and every
``eval_every_steps`` (and at the end) evaluates the deterministic policy, logs, and saves
``checkpoints/last.pt`` plus the replay buffer. metrics.csv gets one "train" row per
training episode (with the means of the update metrics since the previous row) and one
"eval" row per evaluation (means over its episodes).

Training does not depend on how often the run evaluates. Evaluation drives its own
simulator (``eval_driver``) on fixed evaluation seeds, with the deterministic policy, inside
its own torch / numpy random streams (seeded by the run seed and the step), so the training
episode in flight, the training generators and with them every train row are the same
whatever ``eval_every_steps`` is. CARLA has one ego per server: there evaluation borrows the
training simulator (``eval_driver`` None), and the training episode in flight ends at each
evaluation as a time-limit truncation, so there the cadence does change the training episodes.

A resumed run starts at a checkpoint, written right after an evaluation, in exactly that
state, so it continues as the uninterrupted run would have. A training episode open at the
checkpoint is stored as its index and actions so far, and re-run on the (deterministic)
training simulator when the run resumes; the replayed sums must match the saved ones.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.config import to_dict
from pipeline.data import checkpoint as ckpt
from pipeline.errors import SemoreError
from pipeline.files import atomic_save
from pipeline.finetune.eval import (
    METRICS_NAME,
    EpisodeStats,
    MetricsLog,
    evaluate,
    own_random_streams,
    replay_episode,
    write_summary,
)
from pipeline.finetune.features import acting_features, stored_features
from pipeline.sim.driver import AgentStep, Driver, EpisodeLost
from pipeline.sim.seeding import eval_seeds, eval_torch_seed, loop_rng, train_episode_seed
from semore.replay import ReplayBuffer
from semore.sac import SACAgent

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from pipeline.finetune.captions import OnlineCaptions
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.finetune.reference import ReferenceScores

log = logging.getLogger(__name__)


class OnlineTrainer:
    """Owns the counters, the open training episode, logging and checkpoints of one run."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        agent: SACAgent,
        driver: Driver,
        replay: ReplayBuffer,
        out: Path,
        fabric: Fabric,
        run_info: dict,
        eval_driver: Driver | None = None,
        captions: OnlineCaptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.driver = driver
        # None: evaluation borrows the training simulator (backends with one ego per server).
        self.eval_driver = eval_driver
        self.replay = replay
        # guide.replay_every: annotates each stored step for the guide (None: off).
        self.captions = captions
        self.out = Path(out)
        self.fabric = fabric
        self.run_info = run_info  # encoder source and config, stored with checkpoints
        self.ckpt_path = ckpt.last_checkpoint(self.out)
        self.ckpt_dir = self.ckpt_path.parent
        self.rng = loop_rng(cfg.seed)
        self.step = 0
        self.episode = 0  # training episodes started
        self.num_updates = 0
        self.sim_steps = 0
        self.last_eval_step = -1
        self.wall_time_s = 0.0  # accumulated over resumes
        # This process's CPU time, accumulated over resumes like the wall time, so a run that
        # spans stops reports its whole cost (a runner's per-process count loses the CPU of a
        # process stopped before it reported). None: resumed from a checkpoint without it.
        self.cpu_time_s: float | None = 0.0
        self.current: AgentStep | None = None  # latest step of the open training episode
        self._features: np.ndarray | None = None  # the frozen encoder's features of current.obs
        self._actions: list[np.ndarray] = []  # of the open training episode, for a resume
        self.reference: ReferenceScores | None = None  # expert / random returns, if known
        self.metrics: MetricsLog | None = None
        self._ep = EpisodeStats()  # sums over the open episode
        self._update_sums: dict[str, float] = defaultdict(float)  # since the last train row
        self._update_count: dict[str, int] = defaultdict(int)
        self._t0 = self._rate_t = time.monotonic()
        self._cpu0 = time.process_time()
        self._rate_step = 0

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Replay buffer first, then last.pt naming it (each atomic), then older buffers go."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        replay_name = f"replay-{self.step:09d}.npz"
        atomic_save(self.ckpt_dir / replay_name, lambda f: np.savez(f, **self.replay.state_dict()))
        rng = {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint = {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "agent": self.agent.checkpoint(),
            "step": self.step,
            "episode": self.episode,
            "num_updates": self.num_updates,
            "sim_steps": self.sim_steps,
            "last_eval_step": self.last_eval_step,
            "wall_time_s": self._wall_time(),
            "cpu_time_s": self._cpu_time(),
            "rng": rng,
            "replay_file": replay_name,
            "open_episode": self._open_episode(),
            "update_sums": dict(self._update_sums),
            "update_count": dict(self._update_count),
            "config": to_dict(self.cfg),
            **self.run_info,
        }
        atomic_save(self.ckpt_path, lambda f: torch.save(checkpoint, f))
        for old in self.ckpt_dir.glob("replay-*.npz"):
            if old.name != replay_name:
                old.unlink()
        log.info("saved %s at step %d", self.ckpt_path, self.step)

    def load(self, checkpoint: dict) -> None:
        """Restore the agent, replay buffer, counters and RNGs of :meth:`save`."""
        self.agent.restore(checkpoint["agent"])
        replay_path = self.ckpt_dir / checkpoint["replay_file"]
        if not replay_path.is_file():
            raise SemoreError(
                f"{replay_path} is missing: expected the replay buffer saved with {self.ckpt_path}"
            )
        with np.load(replay_path) as saved:
            self.replay.load_state_dict({key: saved[key] for key in saved.files})
        for name in ("step", "episode", "num_updates", "sim_steps", "last_eval_step"):
            setattr(self, name, int(checkpoint[name]))
        self.wall_time_s = float(checkpoint["wall_time_s"])
        cpu = checkpoint.get("cpu_time_s")  # absent from checkpoints of older versions
        self.cpu_time_s = None if cpu is None else float(cpu)
        self.rng.bit_generator.state = checkpoint["rng"]["numpy"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self._update_sums.update(checkpoint["update_sums"])
        self._update_count.update(checkpoint["update_count"])
        if checkpoint["open_episode"] is not None:
            self._resume_episode(checkpoint["open_episode"])

    def _open_episode(self) -> dict | None:
        """What re-creates the open training episode on resume (None when none is open)."""
        if self.current is None:
            return None
        actions = np.stack(self._actions) if self._actions else np.zeros((0, self.agent.action_dim))
        features = self._features
        return {
            "index": self.episode - 1,
            "actions": torch.as_tensor(actions, dtype=torch.float32),
            "features": None if features is None else torch.as_tensor(features),
            "stats": dataclasses.asdict(self._ep),
        }

    def _resume_episode(self, saved: dict) -> None:
        """Re-run the open training episode of a checkpoint up to where it was saved."""
        self._actions = list(saved["actions"].numpy())
        seed = train_episode_seed(self.cfg.seed, saved["index"])
        # The replay already holds the episode's annotations; re-annotating the steps restores
        # the online annotator's history (motion gap, carried keyframe) for the next ones.
        observe = None if self.captions is None else self._annotations
        self.current, self._ep = replay_episode(self.driver, seed, self._actions, observe)
        if dataclasses.asdict(self._ep) != saved["stats"]:
            got, want = self._ep.episode_return, saved["stats"]["episode_return"]
            raise SemoreError(
                f"{self.ckpt_path}: re-running training episode "
                f"{saved['index']} ({len(self._actions)} steps) gave return {got!r}: expected "
                f"{want!r} and the same sums (a deterministic simulator, as highway-env is)"
            )
        features = saved["features"]
        self._features = None if features is None else features.numpy()

    # ------------------------------------------------------------------ logging
    def _wall_time(self) -> float:
        return self.wall_time_s + time.monotonic() - self._t0

    def _cpu_time(self) -> float | None:
        if self.cpu_time_s is None:
            return None
        return self.cpu_time_s + time.process_time() - self._cpu0

    def _log(self, phase: str, values: dict) -> None:
        row = {"phase": phase, "step": self.step, "episode": self.episode, **values}
        row["wall_time_s"] = self._wall_time()
        self.metrics.write(row)
        numbers = {f"{phase}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        self.fabric.log_dict(numbers, step=self.step)

    # ------------------------------------------------------------------ episodes
    def _annotations(self, step: AgentStep, first: bool) -> dict[str, np.ndarray] | None:
        """What the replay stores for the guide with ``step`` (None without online captions)."""
        if self.captions is None:
            return None
        return self.captions.start(step.state) if first else self.captions.step(step.state)

    def _start_episode(self) -> None:
        self.current = self.driver.reset(train_episode_seed(self.cfg.seed, self.episode))
        self._features = self._cached_features(self.current)
        annotations = self._annotations(self.current, first=True)
        self.replay.add_first(self.current.frame, self.current.motion, self._features, annotations)
        self.episode += 1
        self._ep = EpisodeStats()
        self._actions = []

    # ------------------------------------------------------------------ encoder regime
    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is fixed at this point of the run (see ``encoder_mode``)."""
        mode = self.cfg.encoder_mode
        return mode == "frozen" or (mode == "warmup" and self.num_updates < self.cfg.warmup_updates)

    def _cached_features(self, step: AgentStep) -> np.ndarray | None:
        """The frozen encoder's features of ``step.obs``, computed once and stored with it."""
        # Frozen lower layers' tokens are stored in every phase; h only while frozen.
        if self.replay.feature_dim == 0 or not (self.encoder_frozen or self.cfg.caches_tokens):
            return None
        return stored_features(self.agent, self.replay.feature_key, step.obs)

    def _end_episode(self) -> None:
        """Log the open episode (if any) as a train row; the next step starts a new one."""
        if self.current is None:
            return
        row = self._ep.summary()
        elapsed = time.monotonic() - self._rate_t
        row["steps_per_s"] = (self.step - self._rate_step) / max(elapsed, 1e-9)
        self._rate_t, self._rate_step = time.monotonic(), self.step
        row.update({k: v / self._update_count[k] for k, v in self._update_sums.items()})
        self._update_sums.clear()
        self._update_count.clear()
        self._log("train", row)
        self.current = None

    def _act(self) -> np.ndarray:
        if self.step < self.cfg.num_seed_steps:
            return self.rng.uniform(-1.0, 1.0, self.agent.action_dim).astype(np.float32)
        # Acting stays in float32: one small forward pass gains nothing from autocast.
        if self._features is not None:  # already encoded for the replay buffer
            h = acting_features(self.agent, self.replay.feature_key, self._features)
            return self.agent.act_on_features(h, sample=True)
        return self.agent.act(self.current.obs, sample=True)

    def _update(self) -> None:
        if self.num_updates == 0 and self.cfg.num_seed_steps == 0:
            self.agent.set_target_stats(**self.replay.target_stats())
        frozen = self.encoder_frozen
        if self.agent.encoder_trainable == frozen:
            self.agent.set_encoder_trainable(not frozen)
            if not frozen:
                log.info("update %d: the encoder starts training", self.num_updates)
        cached = frozen or self.cfg.caches_tokens
        batch = self.replay.sample(self.cfg.batch_size, self.rng, features=cached)
        with self.fabric.autocast():
            # The update counter (not the env step) drives actor/target schedules, so
            # actor_update_every keeps its meaning whatever update_every is.
            metrics = self.agent.update(batch, self.num_updates)
        self.num_updates += 1
        for key, value in metrics.items():
            self._update_sums[key] += value
            self._update_count[key] += 1

    def _evaluate(self) -> dict:
        driver = self.eval_driver
        if driver is None:
            self._end_episode()  # evaluation borrows the training simulator
            driver = self.driver
        seeds = eval_seeds(self.cfg.eval_seed, self.cfg.num_eval_episodes)

        def policy(obs: np.ndarray) -> np.ndarray:
            return self.agent.act(obs, sample=False)

        with own_random_streams(eval_torch_seed(self.cfg.seed, self.step), self.agent.device):
            result = evaluate(driver, policy, seeds)
        if self.reference is not None:
            result["normalized_return"] = self.reference.normalize(result["episode_return"])
        self.last_eval_step = self.step
        self._log("eval", result)
        log.info(
            "step %d/%d: eval return %.1f +- %.1f, distance %.1f m, collisions %.2f, "
            "|steer| %.3f (%d updates, %.0f s)",
            self.step,
            self.cfg.num_train_steps,
            result["episode_return"],
            result["episode_return_std"],
            result["distance_m"],
            result["collisions"],
            result["mean_abs_steer"],
            self.num_updates,
            self._wall_time(),
        )
        self.save()
        self._rate_t, self._rate_step = time.monotonic(), self.step
        return result

    def _maybe_evaluate(self) -> None:
        due = self.step % self.cfg.eval_every_steps == 0 or self.step >= self.cfg.num_train_steps
        # Between step 0 and the first update the policy has not changed: evaluating it again
        # would only repeat the step-0 row.
        learned = self.step == 0 or self.num_updates > 0
        if due and learned and self.step != self.last_eval_step:
            self._evaluate()

    # ------------------------------------------------------------------ main loop
    def train(self) -> dict:
        """Run until ``num_train_steps`` agent steps; return the summary (also written)."""
        cfg = self.cfg
        self._t0 = self._rate_t = time.monotonic()
        self._cpu0 = time.process_time()
        self._rate_step = self.step
        # A resume keeps the rows up to its checkpoint; a new run starts an empty file.
        resumed = self.last_eval_step >= 0
        self.metrics = MetricsLog(
            self.out / METRICS_NAME, keep_up_to_step=self.step if resumed else -1
        )
        while self.step < cfg.num_train_steps:
            self._maybe_evaluate()
            if self.current is None:
                self._start_episode()
            action = self._act()
            try:
                result = self.driver.step(action)
            except EpisodeLost:
                self._end_episode()  # the lost step is not counted; its episode ends here
                continue
            self._features = self._cached_features(result)
            self._actions.append(action)
            self.replay.add(
                action,
                result.reward,
                result.frame,
                result.terminated,
                result.motion,
                self._features,
                annotations=self._annotations(result, first=False),
            )
            self.current = result
            self.step += 1
            self.sim_steps += result.sim_steps
            self._ep.add(result)
            if self.step == cfg.num_seed_steps:
                # Auxiliary targets are standardised with the seed steps' statistics: data of
                # uniform random actions, the same for every encoder of a seed.
                self.agent.set_target_stats(**self.replay.target_stats())
            if self.step > cfg.num_seed_steps and self.step % cfg.update_every == 0:
                for _ in range(cfg.updates_per_step):
                    self._update()
            if result.terminated or result.truncated:
                self._end_episode()
        self._maybe_evaluate()
        return self.finish()

    def finish(self) -> dict:
        """Write learning_curve.png and summary.json from metrics.csv."""
        wall_time_s = self._wall_time()
        counters = {
            "step": self.step,
            "num_train_steps": self.cfg.num_train_steps,
            "sim_steps": self.sim_steps,
            "episodes": self.episode,
            "num_updates": self.num_updates,
            "wall_time_s": wall_time_s,
            "cpu_time_s": self._cpu_time(),
            "steps_per_s": self.step / max(wall_time_s, 1e-9),
            "seed": self.cfg.seed,
            "encoder_mode": self.cfg.encoder_mode,
            "backend": self.cfg.env.backend,
            **self.run_info,
        }
        title = f"encoder: {self.run_info['encoder_source']}"
        return write_summary(self.out, title, counters)
