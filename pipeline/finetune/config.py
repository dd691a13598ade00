"""Typed config of stage 3b (``semore-finetune``): simulator, SAC, encoder, budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pipeline.config import resumable
from pipeline.sim import EnvConfig, backend_spec
from semore.checks import (
    MAX_BATCH,
    MAX_BUFFER,
    MAX_LR,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    Float,
    Int,
    Opt,
    check_fields,
)
from semore.encoder import MAX_FRAME_STACK, EncoderArch
from semore.sac_config import SACConfig


@dataclass
class FabricConfig:
    """Where and in which precision the agent computes (Lightning Fabric)."""

    # "auto" uses a GPU when there is one, else the CPU.
    accelerator: str = "auto"
    # "32-true" is exact; "bf16-mixed" autocasts forward passes (no loss scaling needed).
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    # One device: one simulator feeds one learner, and several seeds scale as separate
    # processes. `devices` could only ever be 1, so it went; configs and checkpoints that
    # still carry it load when it is 1 (pipeline.config.RETIRED).
    RETIRED: ClassVar[dict[str, object]] = {"devices": 1}


@dataclass
class GuideConfig:
    """How strongly and how often the pretraining terms guide the encoder in ``guided`` mode."""

    # Scale of the pretraining loss (its own term weights, as pretrained) next to the critic
    # loss, in one backward pass. 1: each term counts as in pretraining (O(1) after the
    # standardisation) against a critic loss of the same order (SGI keeps its SPR term at 5).
    # 0 is exactly encoder_mode finetune: no guide batch is read, no RNG is drawn.
    weight: float = 1.0
    # A guide batch every `every` critic updates. A guide batch costs an encoder pass of
    # `batch_size` frames from the pixels (~100 ms at 32 on one CPU thread, twice a cached-token
    # update): every 2nd update keeps a guided arm on cached tokens (encoder_trainable_from
    # projection) at ~2.7x a frozen arm per agent step, against 3.7x at 1 (rl_update.py).
    every: int = 2
    # 32 frame stacks: InfoNCE needs some negatives per batch, and at 32 the guide's encoder
    # pass is a quarter of a batch-128 update's.
    batch_size: int = 32
    # The pretraining optimiser's rate (pretrain optim.lr) for the heads and temperatures.
    heads_lr: float = 3e-4
    # The guide dataset: null = the one the export records; a folder or hf://datasets/ORG/NAME
    # [@REVISION] to point elsewhere (needed with --encoder none, or an export without a record).
    data: str | None = None
    # Shuffle buffer over frame stacks, as pretraining's: decorrelates consecutive steps.
    shuffle_buffer: int = 256
    # With a frozen trunk (encoder_trainable_from interaction/projection) its tokens of a guide
    # frame never change, so they are computed once for the whole guide dataset at the start
    # (8 KB per frame for the default encoder: 72 MB for the study's 8953) and guide batches
    # are drawn from that table: the trunk pass (~100 ms per guide batch, above) is skipped. Like the
    # RL batches on cached tokens, they then go without DrQ's pixel shift. false: frames.
    cache_tokens: bool = True
    # The dataset holds the expert's states; the agent soon drives where it never went. n: every
    # n-th guide batch is of the agent's own replayed frames instead, each captioned when it
    # was stored (the scene captioner on the simulator state, embedded by the text encoder the
    # dataset's manifest records: a VLM-captioned dataset is an error), so the terms also
    # cover the states RL visits. Costs 2 x 4 bytes x embedding dim per replay slot (300 MB
    # per 100k slots at MiniLM's 384) and a text-encoder pass per new caption. 0 (off, every
    # guide batch from the dataset) by default: at 2 on tuning seeds it scored 0.52 against 0.67
    # (replayed motion targets lie 2-11 dataset stds out and their term dominates the guide loss;
    # benchmarks/results/tune_learner/).
    replay_every: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self,
            weight=Float(0.0, MAX_WEIGHT),  # 0 = finetune
            every=Int(1, MAX_STEPS),
            batch_size=Int(1, MAX_BATCH),
            heads_lr=Float(0.0, MAX_LR, low_open=True),
            shuffle_buffer=Int(1, MAX_BUFFER),
            replay_every=Int(0, MAX_STEPS),  # 0 = off
        )


SCRATCH_ENCODER_LR = 1e-3  # DrQ's rate for an encoder learned from scratch
PRETRAINED_ENCODER_LR = 1e-4  # 10x lower: keep what pretraining learned while the critic is new


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run, except the encoder export itself."""

    # The embedded highway simulator at the DrQ / DBC 84x84 observation size.
    env: EnvConfig = field(default_factory=EnvConfig)
    # Simulator steps per agent decision. None = 0.2 s per decision as in DBC: 1 on highway
    # (each step already spans 3 ticks at 15 Hz, i.e. 5 Hz control) and 4 on CARLA (20 Hz).
    action_repeat: int | None = None
    # 3 frames, as in DrQ and the pretraining default; must match a pretrained export.
    frame_stack: int = 3
    # Counted in agent steps (decisions); the simulator runs action_repeat times as many.
    # 100k is the DrQ / DBC "100k steps" budget. A --resume may raise it.
    num_train_steps: int = resumable(default=100_000)
    # Uniform random actions before learning fill the buffer with diverse data (DrQ: 1000).
    num_seed_steps: int = 1000
    # One update per agent step, as in SAC-AE / DrQ; raise it to trade data use for speed.
    update_every: int = 1
    # Updates at each update step (the update-to-data ratio is updates_per_step / update_every).
    # Frozen-encoder updates touch only the MLP heads, so several per step stay cheap.
    updates_per_step: int = 1
    # SAC-AE / DrQ batch size for 84 px frames.
    batch_size: int = 128
    # The whole default run fits (100k frames of 84x84 = 2.1 GB), so nothing is evicted.
    replay_capacity: int = 100_000
    # 1-step TD targets as in SAC-AE / DrQ; 3 (DrQ-v2) propagates the reward faster.
    nstep: int = 1
    # 10 evaluations per default run: enough points for a learning curve. Evaluation has its
    # own simulator and random streams where the backend can host two (highway), so this does
    # not change training; on CARLA (one ego per server) it borrows the training simulator and
    # ends the training episode in flight at every evaluation.
    eval_every_steps: int = 10_000
    # DrQ / DBC report means over 10 episodes.
    num_eval_episodes: int = 10
    # Measure the built-in expert's and uniform-random returns on the evaluation episodes once
    # per run folder (reference.json), so every evaluation row has an expert-normalised score.
    measure_reference: bool = True
    # What RL may do to the encoder. "finetune": end to end from the first update, as in the
    # paper; "frozen": never changes (its features are computed once per stored observation and
    # updates touch only the heads, as in R3M / VIP / PVR); "warmup": frozen for the first
    # `warmup_updates` updates, so the critic is no longer random when encoder gradients start;
    # "guided": end to end while the pretraining terms stay on (see `guide`).
    encoder_mode: Literal["frozen", "finetune", "warmup", "guided"] = "finetune"
    warmup_updates: int = 1000
    # The first layer a trained encoder trains. "trunk": all of it, from the pixels (the paper).
    # "interaction": the conv trunks stay as they are and their 8x8 token grids are cached per
    # stored frame (float16), so updates train the interaction, stream projections and fusion;
    # "projection": the interaction stays too (its output is cached). The trunks' passes are
    # ~90% of an end-to-end update and lower layers transfer (PiSCO). Per agent step at batch
    # 128 and 2 updates per step, against a frozen arm: trunk 32x, interaction 4.6x, projection
    # 1.7x (benchmarks/results/rl_update/). Frozen mode ignores it (it caches h itself).
    encoder_trainable_from: Literal["trunk", "interaction", "projection"] = "trunk"
    # encoder_mode guided: weight, cadence and batch of the pretraining terms, and their dataset.
    guide: GuideConfig = field(default_factory=GuideConfig)
    # The encoder's learning rate when it trains. None: 1e-3 (the DrQ rate) for --encoder none,
    # 1e-4 for a pretrained export, whose features a random critic's early gradients would
    # otherwise overwrite within a few hundred updates.
    encoder_lr: float | None = None
    # SAC-AE / DrQ hyper-parameters, and the online auxiliary weights (reward_aux_weight,
    # motion_aux_weight; 0 = plain SAC).
    sac: SACConfig = field(default_factory=SACConfig)
    # The architecture --encoder none builds; image size and frame stack follow the env and
    # frame_stack. An export brings its own architecture (and must match the env).
    encoder: EncoderArch = field(default_factory=EncoderArch)
    # Seeds the networks, replay sampling and the training episodes.
    seed: int = 0
    # Seeds the evaluation episodes, the same for every training seed and every evaluation,
    # and drawn from a range disjoint from training episode seeds (see pipeline.sim.seeding).
    eval_seed: int = 0
    # Single device, full precision: exact and resumable bit for bit. Where to compute may
    # change on a resume.
    fabric: FabricConfig = resumable(default_factory=FabricConfig)

    def __post_init__(self) -> None:
        steps = Int(1, MAX_STEPS)
        check_fields(
            self,
            action_repeat=Opt(Int(1, 1000)),
            frame_stack=Int(1, MAX_FRAME_STACK),
            num_train_steps=steps,
            num_seed_steps=Int(0, MAX_STEPS),
            update_every=steps,
            updates_per_step=Int(1, 1000),
            batch_size=Int(1, MAX_BATCH),
            replay_capacity=Int(1, MAX_BUFFER),  # its memory is checked against the machine's
            nstep=Int(1, 1000),
            eval_every_steps=steps,
            num_eval_episodes=Int(1, 10**5),
            warmup_updates=Int(0, MAX_STEPS),
            encoder_lr=Opt(Float(0.0, MAX_LR, low_open=True)),
            seed=Int(0, MAX_SEED),
            eval_seed=Int(0, MAX_SEED),
        )
        if self.replay_capacity <= self.frame_stack + self.nstep:
            raise ValueError(
                f"replay_capacity is {self.replay_capacity}: expected more than frame_stack + "
                f"nstep = {self.frame_stack + self.nstep}"
            )
        if self.encoder.kind == "drqv2" and (self.encoder_mode == "guided" or self.caches_tokens):
            raise ValueError(
                f"encoder.kind drqv2 with encoder_mode {self.encoder_mode} and "
                f"encoder_trainable_from {self.encoder_trainable_from}: expected frozen, finetune "
                "or warmup from the trunk (DrQ-v2 has no token grid and no pretraining heads)"
            )

    @property
    def caches_tokens(self) -> bool:
        """Whether the replay stores frozen lower layers' tokens (``encoder_trainable_from``)."""
        return self.encoder_trainable_from != "trunk" and self.encoder_mode != "frozen"

    def resolved_encoder_lr(self, pretrained: bool) -> float:
        """``encoder_lr``, or its default for a pretrained or a fresh encoder."""
        if self.encoder_lr is not None:
            return self.encoder_lr
        return PRETRAINED_ENCODER_LR if pretrained else SCRATCH_ENCODER_LR

    @property
    def repeat(self) -> int:
        """Simulator steps per agent step: ``action_repeat``, else the backend's default."""
        if self.action_repeat is not None:
            return self.action_repeat
        return backend_spec(self.env).default_action_repeat
