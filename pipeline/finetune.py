"""Stage 3b, ``semore-finetune``: SAC + DrQ fine-tuning of an encoder in a live simulator.

``--encoder RUN/encoder.pt`` starts from a pretrained export; ``--encoder none`` is the
from-scratch baseline with the identical architecture and code path (only the initial
encoder weights differ; the heads are seeded identically). The loop is in
:mod:`pipeline.rl_loop`; outputs in ``--out``: ``metrics.csv``, ``learning_curve.png``,
``summary.json``, ``checkpoints/last.pt`` (+ replay buffer) and TensorBoard logs in ``tb/``.

CARLA (``env.backend: carla``): a lost server connection, tick time-out or crash raises
``SimulatorConnectionError``; the run reconnects and starts a new episode, and gives up
with a one-line error after ``env.carla.max_retries`` consecutive failures.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from pipeline import cli
from pipeline.config import flatten, load_config, to_dict
from pipeline.errors import SemoreError
from pipeline.rl_env import MOTION_DIM, Driver, motion_stats
from pipeline.rl_loop import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    OnlineTrainer,
)
from pipeline.sim import make_env
from pipeline.sim.base import ACTION_DIM, RewardConfig
from pipeline.sim.configs import CarlaConfig, HighwayConfig
from semore.encoder import EncoderConfig, SemoreEncoder, load_encoder, load_encoder_metadata
from semore.replay import ReplayBuffer
from semore.sac import SACAgent, SACConfig

log = logging.getLogger(__name__)

# Fields a --resume may change: how long to train, where to compute, how to reach CARLA.
_RESUMABLE_FIELDS = ("num_train_steps", "fabric")
_CARLA_CONNECTION_FIELDS = (
    "hosts",
    "timeout_s",
    "max_retries",
    "server_cmd",
    "server_start_wait_s",
)


@dataclass
class EnvConfig:
    """The simulator the agent drives in (same backends and reward as stage 1)."""

    # The embedded simulator needs no server, so the default runs anywhere.
    backend: Literal["highway", "carla"] = "highway"
    highway: HighwayConfig = field(default_factory=HighwayConfig)
    carla: CarlaConfig = field(default_factory=CarlaConfig)
    # The DBC reward, as in stage 1, so returns compare with the recorded data.
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class FabricConfig:
    """Where and in which precision the agent computes (Lightning Fabric)."""

    # "auto" uses a GPU when there is one, else the CPU.
    accelerator: str = "auto"
    # "32-true" is exact; "bf16-mixed" autocasts forward passes (no loss scaling needed).
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    # One simulator feeds one learner; run several seeds as separate processes to scale.
    devices: int = 1


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
    # 100k is the DrQ / DBC "100k steps" budget.
    num_train_steps: int = 100_000
    # Uniform random actions before learning fill the buffer with diverse data (DrQ: 1000).
    num_seed_steps: int = 1000
    # One update per agent step, as in SAC-AE / DrQ; raise it to trade data use for speed.
    update_every: int = 1
    # SAC-AE / DrQ batch size for 84 px frames.
    batch_size: int = 128
    # The whole default run fits (100k frames of 84x84 = 2.1 GB), so nothing is evicted.
    replay_capacity: int = 100_000
    # 1-step TD targets as in SAC-AE / DrQ; 3 (DrQ-v2) propagates the reward faster.
    nstep: int = 1
    # 10 evaluations per default run: enough points for a learning curve.
    eval_every_steps: int = 10_000
    # DrQ / DBC report means over 10 episodes.
    num_eval_episodes: int = 10
    # SAC-AE / DrQ hyper-parameters; also where freeze_encoder and the online auxiliary
    # weights (reward_aux_weight, motion_aux_weight; 0 = plain SAC) live.
    sac: SACConfig = field(default_factory=SACConfig)
    # Used for --encoder none; image size and frame stack follow the env and frame_stack.
    # With an export, its own config is used (and must match the env).
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Seeds the networks, replay sampling and the episodes (eval episodes repeat per eval).
    seed: int = 0
    # Single device, full precision: exact and resumable bit for bit.
    fabric: FabricConfig = field(default_factory=FabricConfig)

    def __post_init__(self) -> None:
        positive = ("frame_stack", "num_train_steps", "update_every", "batch_size", "nstep")
        for name in (*positive, "eval_every_steps", "num_eval_episodes", "replay_capacity"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}: expected an integer >= 1")
        if self.num_seed_steps < 0:
            raise ValueError(f"num_seed_steps is {self.num_seed_steps}: expected >= 0")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise ValueError(f"action_repeat is {self.action_repeat}: expected >= 1 or null")
        if self.fabric.devices != 1:
            raise ValueError(
                f"fabric.devices is {self.fabric.devices}: expected 1 (run seeds as separate processes)"
            )

    @property
    def repeat(self) -> int:
        if self.action_repeat is not None:
            return self.action_repeat
        return 4 if self.env.backend == "carla" else 1


def env_image_shape(env: EnvConfig) -> tuple[int, int]:
    """(H, W) of the "rgb" frame the backend will produce (CARLA stitches its cameras)."""
    if env.backend == "carla":
        return env.carla.image_height, env.carla.image_width * len(env.carla.camera_yaws_deg)
    return env.highway.image_height, env.highway.image_width


def build_encoder(
    encoder_arg: str, cfg: FinetuneConfig
) -> tuple[SemoreEncoder, dict, EncoderConfig]:
    """The agent's encoder from an export path or "none", plus the export's metadata.

    Call after seeding: both branches build the same module (the export is loaded into a
    freshly initialised one), so the RNG stream, and with it the SAC heads, are the same.
    """
    height, width = env_image_shape(cfg.env)
    where = f"env.{cfg.env.backend}"
    if encoder_arg.lower() == "none":
        try:
            enc_cfg = replace(
                cfg.encoder, frame_stack=cfg.frame_stack, image_height=height, image_width=width
            )
        except ValueError as err:
            raise SemoreError(f"encoder: {err}") from None
        return SemoreEncoder.from_config(enc_cfg), {}, enc_cfg
    path = Path(encoder_arg)
    if not path.is_file():
        raise SemoreError(
            f"--encoder {path} not found: expected an encoder export (RUN/encoder.pt) or 'none'"
        )
    try:
        encoder = load_encoder(path)
        metadata = load_encoder_metadata(path)
    except ValueError as err:
        raise SemoreError(f"--encoder {path}: {err}") from None
    enc_cfg = encoder.config
    if (enc_cfg.image_height, enc_cfg.image_width) != (height, width):
        raise SemoreError(
            f"--encoder {path} takes {enc_cfg.image_height}x{enc_cfg.image_width} frames but "
            f"{where} renders {height}x{width}: expected matching {where}.image_height/image_width"
        )
    if enc_cfg.frame_stack != cfg.frame_stack:
        raise SemoreError(
            f"--encoder {path} stacks {enc_cfg.frame_stack} frames but frame_stack is "
            f"{cfg.frame_stack}: expected --frame_stack {enc_cfg.frame_stack}"
        )
    return encoder, metadata, enc_cfg


def build_agent(encoder: SemoreEncoder, cfg: FinetuneConfig) -> SACAgent:
    """SAC around ``encoder``; a motion head only when the motion auxiliary loss is on."""
    motion_dim = MOTION_DIM if cfg.sac.motion_aux_weight > 0 else 0
    return SACAgent(encoder, action_dim=ACTION_DIM, cfg=cfg.sac, motion_dim=motion_dim)


def _check_resume(cfg: FinetuneConfig, checkpoint: dict, path: Path, source: str) -> None:
    """One-line error when --resume would continue a run with another config or encoder."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SemoreError(
            f"{path} is not a semore-finetune checkpoint: expected {CHECKPOINT_FORMAT!r}"
        )
    if checkpoint.get("format_version") != CHECKPOINT_VERSION:
        raise SemoreError(
            f"{path} has format_version {checkpoint.get('format_version')!r}: expected {CHECKPOINT_VERSION}"
        )

    def comparable(data: dict) -> dict:
        data = {k: v for k, v in data.items() if k not in _RESUMABLE_FIELDS}
        carla = data["env"]["carla"]
        data["env"] = {
            **data["env"],
            "carla": {k: v for k, v in carla.items() if k not in _CARLA_CONNECTION_FIELDS},
        }
        return data

    old, new = flatten(comparable(checkpoint["config"])), flatten(comparable(to_dict(cfg)))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise SemoreError(
                f"--resume: {key} is {new.get(key)!r} but {path} was trained with {old.get(key)!r}: "
                "expected the same config, or a new --out"
            )
    was_none = checkpoint["encoder_source"] == "none"
    if was_none != (source == "none"):
        raise SemoreError(
            f"--resume: --encoder is {source!r} but {path} started from {checkpoint['encoder_source']!r}: "
            "expected the same --encoder, or a new --out"
        )


def baseline_encoder_flags(export: str | Path) -> list[str]:
    """``--encoder.*`` flags that make ``--encoder none`` rebuild ``export``'s architecture.

    Image size and frame stack are left out: a fresh encoder takes them from the env and
    ``frame_stack``, which must match the export anyway.
    """
    skip = ("frame_stack", "image_height", "image_width")
    cfg = asdict(load_encoder(export).config)
    return [
        arg for k, v in cfg.items() if k not in skip for arg in (f"--encoder.{k}", json.dumps(v))
    ]


def finetune(cfg: FinetuneConfig, encoder_arg: str, out: Path, resume: bool = False) -> dict:
    """Run (or continue) one fine-tuning run; returns the summary written to out."""
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import TensorBoardLogger

    ckpt_path = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    checkpoint = None
    if ckpt_path.is_file():
        if not resume:
            raise SemoreError(
                f"--out {out} already holds a fine-tuning run ({ckpt_path}): expected --resume "
                "to continue it, or a new --out"
            )
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for foreign or corrupt files
            raise SemoreError(
                f"{ckpt_path} is not readable ({type(err).__name__}): expected a checkpoint "
                "written by semore-finetune"
            ) from None
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting a new run", out)

    torch.manual_seed(cfg.seed)  # before building the encoder: see build_encoder
    encoder, metadata, enc_cfg = build_encoder(encoder_arg, cfg)
    source = "none" if encoder_arg.lower() == "none" else str(Path(encoder_arg).resolve())
    if checkpoint is not None:
        _check_resume(cfg, checkpoint, ckpt_path, source)
    out.mkdir(parents=True, exist_ok=True)

    fabric = Fabric(
        accelerator=cfg.fabric.accelerator,
        devices=cfg.fabric.devices,
        precision=cfg.fabric.precision,
        loggers=TensorBoardLogger(root_dir=out, name="tb"),
    )
    agent = build_agent(encoder, cfg).to(fabric.device)
    motion_mean = motion_std = None
    if cfg.sac.motion_aux_weight > 0:
        motion_mean, motion_std = motion_stats(metadata, where=f"--encoder {encoder_arg}")
    replay = ReplayBuffer(
        cfg.replay_capacity,
        (*env_image_shape(cfg.env), 3),
        cfg.frame_stack,
        action_dim=agent.action_dim,
        motion_dim=MOTION_DIM if cfg.sac.motion_aux_weight > 0 else 0,
        discount=cfg.sac.discount,
        nstep=cfg.nstep,
    )
    env = make_env(cfg.env.backend, cfg.env.reward, cfg.env.highway, cfg.env.carla)
    try:
        if tuple(env.image_shape) != env_image_shape(cfg.env):
            raise SemoreError(
                f"env.{cfg.env.backend} renders {env.image_shape} frames: expected {env_image_shape(cfg.env)}"
            )
        max_retries = cfg.env.carla.max_retries if cfg.env.backend == "carla" else 0
        driver = Driver(env, cfg.repeat, cfg.frame_stack, max_retries, motion_mean, motion_std)
        run_info = {"encoder_source": source, "encoder_config": asdict(enc_cfg)}
        trainer = OnlineTrainer(cfg, agent, driver, replay, out, fabric, run_info)
        if checkpoint is not None:
            trainer.load(checkpoint)
            log.info("resuming %s at step %d", out, trainer.step)
        summary = trainer.train()
    finally:
        env.close()
        for logger in fabric.loggers:
            logger.finalize("success")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-finetune", "Fine-tune a (pretrained or fresh) encoder with SAC + DrQ online."
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="YAML, e.g. configs/finetune/quickstart.yaml"
    )
    parser.add_argument(
        "--encoder",
        required=True,
        help="exported encoder (RUN/encoder.pt), or 'none' for the baseline",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (created, or continued with --resume)"
    )
    parser.add_argument(
        "--num-train-steps",
        type=cli.positive_int,
        help="agent steps in total (a resume continues to it)",
    )
    parser.add_argument("--seed", type=int, help="seeds the networks, replay sampling and episodes")
    parser.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoints/last.pt"
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    # SIGTERM (job schedulers) ends like Ctrl-C: the simulator is closed, checkpoints stay.
    cfg = load_config(FinetuneConfig, args.config, overrides)
    flags = {"num_train_steps": args.num_train_steps, "seed": args.seed}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    summary = finetune(cfg, args.encoder, args.out, resume=args.resume)
    final = summary["final_eval"]
    print(
        f"{args.out}: step {summary['step']}, eval return {final['episode_return']:.1f}, "
        f"distance {final['distance_m']:.1f} m, collisions {final['collisions']:.2f} "
        f"({summary['steps_per_s']:.1f} steps/s)"
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
