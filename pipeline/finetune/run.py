"""Stage 3b, ``semore-finetune``: SAC + DrQ fine-tuning of an encoder in a live simulator.

``--encoder RUN/encoder.pt`` starts from a pretrained export; ``--encoder none`` is the
from-scratch baseline with the identical architecture and code path (only the initial
encoder weights differ; the heads are seeded identically). The loop is in
:mod:`pipeline.finetune.loop`; outputs in ``--out``: ``metrics.csv``, ``learning_curve.png``,
``summary.json``, ``checkpoints/last.pt`` (+ replay buffer) and TensorBoard logs in ``tb/``.

CARLA (``env.backend: carla``): a lost server connection, tick time-out or crash raises
``SimulatorConnectionError``; the run reconnects and starts a new episode, and gives up
with a one-line error after ``env.carla.max_retries`` consecutive failures.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from torch import nn

from pipeline import cli, memory
from pipeline.config import (
    content_dict,
    content_of,
    first_difference,
    load_config,
    override_flags,
)
from pipeline.data.checkpoint import last_checkpoint, read_checkpoint
from pipeline.errors import SemoreError
from pipeline.finetune.captions import OnlineCaptions
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.features import replay_features
from pipeline.finetune.guide import build_guide, guide_captions
from pipeline.finetune.loop import OnlineTrainer
from pipeline.finetune.reference import REFERENCE_NAME, reference_for
from pipeline.lock import FolderLock
from pipeline.sim import backend_spec, make_env
from pipeline.sim.base import ACTION_DIM
from pipeline.sim.driver import MOTION_DIM, Driver
from semore.baselines import make_encoder
from semore.checks import MAX_SEED, MAX_STEPS
from semore.encoder import EncoderArch, EncoderConfig, SemoreEncoder, load_encoder, load_export
from semore.guide import PretrainGuide
from semore.replay import ReplayBuffer
from semore.sac import GuideBuilder, SACAgent

log = logging.getLogger(__name__)


def build_encoder(
    encoder_arg: str, cfg: FinetuneConfig
) -> tuple[SemoreEncoder, dict, EncoderConfig]:
    """The agent's encoder from an export path or "none", plus the export's metadata.

    Call after seeding: both branches build the same module (the export is loaded into a
    freshly initialised one), so the RNG stream, and with it the SAC heads, are the same.
    """
    height, width = backend_spec(cfg.env).image_shape
    where = f"env.{cfg.env.backend}"
    if encoder_arg.lower() == "none":
        try:
            enc_cfg = cfg.encoder.to_config(cfg.frame_stack, height, width)
        except ValueError as err:
            raise SemoreError(f"encoder: {err}") from None
        return make_encoder(enc_cfg), {}, enc_cfg
    path = Path(encoder_arg)
    if not path.is_file():
        raise SemoreError(
            f"--encoder {path} not found: expected an encoder export (RUN/encoder.pt) or 'none'"
        )
    try:
        encoder, metadata = load_export(path)
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


def build_agent(
    encoder: SemoreEncoder,
    cfg: FinetuneConfig,
    pretrained: bool,
    guide: GuideBuilder | None = None,
) -> SACAgent:
    """SAC around ``encoder`` at the regime's encoder learning rate; a motion head only when
    the motion auxiliary loss is on. The encoder starts frozen unless ``encoder_mode`` is
    "finetune" or "guided" (the loop unfreezes a "warmup" one); the layers below
    ``encoder_trainable_from`` never train. ``guide`` builds the guided regime's guide."""
    motion_dim = MOTION_DIM if cfg.sac.motion_aux_weight > 0 else 0
    # Channels-last convolutions: ~10% faster updates and feature passes on this CPU
    # (benchmarks/rl_update.py); the weights' values are unchanged.
    encoder = encoder.to(memory_format=torch.channels_last)
    if cfg.caches_tokens:
        encoder.freeze_below(cfg.encoder_trainable_from)
    trainable = cfg.encoder_mode in ("finetune", "guided")
    return SACAgent(
        encoder,
        ACTION_DIM,
        cfg.sac,
        motion_dim=motion_dim,
        encoder_trainable=trainable,
        encoder_lr=cfg.resolved_encoder_lr(pretrained),
        guide=guide,
    )


# Fields added after checkpoints were written whose value here is what those runs did (off).
ADDED_OFF = {
    "encoder.kind": "semore",
    "encoder.trunk": "drq",
    "guide.replay_every": 0,
    "sac.action_smoothness_weight": 0.0,
    "sac.action_smoothness_dims": None,
}


def _check_resume(cfg: FinetuneConfig, checkpoint: dict, path: Path, source: str) -> None:
    """One-line error when --resume would continue a run with another config or encoder."""
    saved = content_of(FinetuneConfig, checkpoint["config"])
    for dotted, value in ADDED_OFF.items():  # a run saved before the field trained without it
        section, name = dotted.split(".")
        saved.get(section, {}).setdefault(name, value)
    diff = first_difference(saved, content_dict(cfg))
    if diff is not None:
        key, before, now = diff
        raise SemoreError(
            f"--resume: {key} is {now!r} but {path} was trained with {before!r}: "
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
    arch = asdict(EncoderArch.of(load_encoder(export).config))
    return override_flags({"encoder": arch})


def _checkpoint_to_resume(out: Path, resume: bool) -> dict | None:
    """The checkpoint in ``out`` that ``--resume`` continues (None for a new run)."""
    path = last_checkpoint(out)
    if not path.is_file():
        if resume:
            log.info("--resume: no checkpoint in %s yet, starting a new run", out)
        return None
    if not resume:
        raise SemoreError(
            f"--out {out} already holds a fine-tuning run ({path}): expected --resume "
            "to continue it, or a new --out"
        )
    return read_checkpoint(path)


def check_memory(cfg: FinetuneConfig) -> None:
    """Refuse a replay buffer or batch that cannot fit in this machine's memory."""
    height, width = backend_spec(cfg.env).image_shape
    frame = memory.frame_bytes(height, width)
    memory.check_fits(
        f"fine-tuning on {height}x{width} frames",
        {
            f"replay of {cfg.replay_capacity} frames": cfg.replay_capacity * frame,
            # obs and next_obs stacks, as uint8 and as float32
            f"batches of {cfg.batch_size}": cfg.batch_size * 2 * cfg.frame_stack * frame * 5,
        },
        "a smaller replay_capacity or batch_size",
    )


def _build_learner(
    cfg: FinetuneConfig, encoder: SemoreEncoder, metadata: dict, source: str, device: torch.device
) -> tuple[SACAgent, ReplayBuffer, OnlineCaptions | None]:
    """The agent on ``device``, its replay buffer and (``guide.replay_every``) the online
    annotator of replayed frames. The replay is made first, from the encoder, because the
    guided regime's guide draws batches from it; the agent then builds the guide after its
    own networks, so the random streams are the same with and without a guide."""
    guided = cfg.encoder_mode == "guided" and cfg.guide.weight > 0  # weight 0: exactly finetune
    captions = guide_captions(cfg, metadata) if guided and cfg.guide.replay_every else None
    replay = ReplayBuffer(
        cfg.replay_capacity,
        (*backend_spec(cfg.env).image_shape, 3),
        cfg.frame_stack,
        action_dim=ACTION_DIM,
        motion_dim=MOTION_DIM if cfg.sac.motion_aux_weight > 0 else 0,
        discount=cfg.sac.discount,
        nstep=cfg.nstep,
        **replay_features(cfg, encoder),
        annotation_dims=captions.annotation_dims if captions is not None else None,
    )
    guide = None
    if guided:
        export = None if source == "none" else Path(source)
        replayed = replay if captions is not None else None

        def guide(trained: nn.Module) -> PretrainGuide:
            return build_guide(trained, cfg, export, metadata, replayed)

    # On its device first: the guide tokenises its dataset with the encoder as it will train.
    encoder = encoder.to(device)
    agent = build_agent(encoder, cfg, pretrained=source != "none", guide=guide)
    return agent.to(device), replay, captions


def _drivers(cfg: FinetuneConfig, envs: list) -> tuple[Driver, Driver | None]:
    """The training driver, and an evaluation driver on a simulator of its own where the
    backend can host two (else None: evaluation borrows the training simulator, BackendSpec).
    Opened simulators are appended to ``envs`` for the caller to close."""
    spec = backend_spec(cfg.env)
    with_motion = cfg.sac.motion_aux_weight > 0
    envs.append(make_env(cfg.env))
    if tuple(envs[0].image_shape) != spec.image_shape:
        raise SemoreError(
            f"env.{cfg.env.backend} renders {envs[0].image_shape} frames: expected {spec.image_shape}"
        )
    driver = Driver(envs[0], cfg.repeat, cfg.frame_stack, spec.max_retries, with_motion)
    if not spec.separate_eval_env:
        return driver, None
    envs.append(make_env(cfg.env))
    return driver, Driver(envs[1], cfg.repeat, cfg.frame_stack, spec.max_retries)


def finetune(
    cfg: FinetuneConfig,
    encoder_arg: str,
    out: Path,
    resume: bool = False,
    shared_reference: Path | None = None,
) -> dict:
    """Run (or continue) one fine-tuning run; returns the summary written to out.
    ``shared_reference``: a folder of reference scores shared with other runs (a study's)."""
    check_memory(cfg)
    checkpoint = _checkpoint_to_resume(out, resume)
    torch.manual_seed(cfg.seed)  # before building the encoder: see build_encoder
    encoder, metadata, enc_cfg = build_encoder(encoder_arg, cfg)
    source = "none" if encoder_arg.lower() == "none" else str(Path(encoder_arg).resolve())
    if checkpoint is not None:
        _check_resume(cfg, checkpoint, last_checkpoint(out), source)
    out.mkdir(parents=True, exist_ok=True)
    fabric = Fabric(
        accelerator=cfg.fabric.accelerator,
        devices=1,  # one simulator feeds one learner (FabricConfig)
        precision=cfg.fabric.precision,
        loggers=TensorBoardLogger(root_dir=out, name="tb"),
    )
    agent, replay, captions = _build_learner(cfg, encoder, metadata, source, fabric.device)
    envs: list = []
    try:
        driver, eval_driver = _drivers(cfg, envs)
        run_info = {"encoder_source": source, "encoder_config": asdict(enc_cfg)}
        trainer = OnlineTrainer(
            cfg, agent, driver, replay, out, fabric, run_info, eval_driver, captions
        )
        if cfg.measure_reference:
            trainer.reference = reference_for(
                cfg, eval_driver or driver, out / REFERENCE_NAME, shared_reference
            )
        if checkpoint is not None:
            trainer.load(checkpoint)
            log.info("resuming %s at step %d", out, trainer.step)
        return trainer.train()
    finally:
        for env in envs:
            env.close()
        for logger in fabric.loggers:
            logger.finalize("success")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-finetune", "Fine-tune a (pretrained or fresh) encoder with SAC + DrQ online."
    )
    parser.add_argument("--config", required=True, help="YAML file or preset name, e.g. quickstart")
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
        type=cli.int_in(1, MAX_STEPS),
        help="agent steps in total (a resume continues to it)",
    )
    parser.add_argument(
        "--seed",
        type=cli.int_in(0, MAX_SEED),
        help="seeds the networks, replay sampling and episodes",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoints/last.pt"
    )
    parser.add_argument(
        "--shared-reference",
        type=Path,
        help="folder of expert/random scores shared with other runs on the same task (a "
        "study's): reused when measured, else measured and added",
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    # SIGTERM (job schedulers) ends like Ctrl-C: the simulator is closed, checkpoints stay.
    cfg = load_config(FinetuneConfig, args.config, overrides, stage="finetune")
    flags = {"num_train_steps": args.num_train_steps, "seed": args.seed}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    with FolderLock(args.out, "finetune"):
        summary = finetune(
            cfg, args.encoder, args.out, resume=args.resume, shared_reference=args.shared_reference
        )
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
