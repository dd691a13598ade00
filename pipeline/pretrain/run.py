"""Stage 3a, ``semore-pretrain``: train the dual-stream encoder on raw + annotation shards.

A run folder holds ``config.yaml`` (the resolved config of the latest invocation),
``checkpoints/last.ckpt`` (the newest complete Lightning checkpoint), ``logs/``
(``csv/version_0/metrics.csv`` and ``tensorboard/version_0``, one per run: a ``--resume``
continues them) and, when training finishes, ``encoder.pt`` (the export fine-tuning and
probing load). A run resumed after a kill at any point ends as an uninterrupted one would,
bit for bit on CPU (see ``pipeline.pretrain.resume``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

from pipeline import cli, memory
from pipeline.config import content_dict, content_of, first_difference, load_config, to_dict
from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from pipeline.lock import FolderLock
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.datamodule import SemoreDataModule
from pipeline.pretrain.module import SemorePretrainModule
from pipeline.pretrain.resume import (
    CommittedCheckpoint,
    RunCSVLogger,
    StepSeed,
    checkpoint_step,
    keep_metrics_before,
    remove_dead_pending,
)
from semore.encoder import save_encoder, trunk_output_size

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
ENCODER_EXPORT = "encoder.pt"
CONFIG_NAME = "config.yaml"  # the resolved config of the latest invocation
LOG_VERSION = 0  # one metrics file per run, continued by --resume
# The loss settings guided fine-tuning rebuilds SemorePretrainLoss with (export["heads"]).
HEAD_LOSS_FIELDS = (
    "sem_weight",
    "mot_weight",
    "motion_reg_weight",
    "reward_weight",
    "temperature",
    "state_weight",
)


def prepare_run(cfg: PretrainConfig, out: Path, resume: bool) -> Path | None:
    """Check ``out`` against ``--resume``; return the checkpoint to resume from, if any."""
    checkpoints = out / CHECKPOINT_DIR
    remove_dead_pending(checkpoints)
    existing = sorted(checkpoints.glob("*.ckpt")) if checkpoints.is_dir() else []
    if resume:
        last = checkpoints / LAST_CHECKPOINT
        if not last.is_file():
            raise SemoreError(f"--resume given but {last} does not exist: expected a run to resume")
        saved_path = out / CONFIG_NAME
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else None
        if isinstance(saved, dict):
            diff = first_difference(content_of(PretrainConfig, saved), content_dict(cfg))
            if diff is not None:
                name, before, now = diff
                raise SemoreError(
                    f"--resume: {name} is {now!r} but {saved_path} has {before!r}: expected the "
                    "config the run was started with (only trainer.* and data.num_workers may "
                    "change), or a new --out"
                )
            workers = saved.get("data", {}).get("num_workers")
            if workers is not None and workers != cfg.data.num_workers:
                log.warning(
                    "--resume: data.num_workers is %d, the run started with %s: the batches "
                    "from here on come in another order than without the interruption",
                    cfg.data.num_workers,
                    workers,
                )
        return last
    if existing:
        raise SemoreError(
            f"--out {out} already holds checkpoints: expected --resume to continue it, or a new --out"
        )
    return None


def check_memory(cfg: PretrainConfig, image_hw: tuple[int, int]) -> None:
    """Refuse a batch or shuffle buffer that cannot fit in this machine's memory."""
    data, arch = cfg.data, cfg.encoder
    frame = memory.frame_bytes(*image_hw)
    streams = 2 if arch.streams == "both" else 1
    # The four convs' maps shrink by 2 pixels each after the strided first one; each layer
    # keeps its output and its ReLU's for the backward pass, which adds a gradient as large.
    map_h, map_w = trunk_output_size(*image_hw)
    map_pixels = sum((map_h + 2 * i) * (map_w + 2 * i) for i in range(4))
    batch = data.batch_size
    activations = batch * streams * arch.num_filters * map_pixels * 3 * memory.FLOAT32_BYTES
    memory.check_fits(
        f"pretraining at data.batch_size {batch} on {image_hw[0]}x{image_hw[1]} frames",
        {
            "input batch (uint8 + float32)": batch * data.frame_stack * frame * 5,
            "conv activations and gradients": activations,
            "shuffle buffers": data.shuffle_buffer * frame * max(1, data.num_workers),
        },
        "a smaller data.batch_size, data.shuffle_buffer or encoder.num_filters",
    )


def build_module(cfg: PretrainConfig, dm: SemoreDataModule) -> SemorePretrainModule:
    stats = dm.stats
    encoder_cfg = cfg.encoder.to_config(cfg.data.frame_stack, *dm.image_hw)
    return SemorePretrainModule(
        encoder_config=asdict(encoder_cfg),
        text_dim=dm.info.embedding_dim,
        motion_dim=len(dm.info.motion_targets),
        state_dim=len(schema.CAPTION_STATE_FIELDS),
        action_dim=dm.info.action_dim,
        motion_mean=stats.motion_mean.tolist(),
        motion_std=stats.motion_std.tolist(),
        reward_mean=stats.reward_mean,
        reward_std=stats.reward_std,
        **asdict(cfg.loss),
        **asdict(cfg.optim),
        aug_pad=cfg.aug_pad,
        objective=cfg.objective,
        **{f"atc_{name}": value for name, value in asdict(cfg.atc).items()},
    )


def extra_frames(cfg: PretrainConfig) -> int:
    """Frames each window holds beyond the stack: ATC's positive lies ``temporal_shift`` later."""
    return cfg.atc.temporal_shift if cfg.objective == "atc" else 0


class StepProgress(Callback):
    """One tqdm bar over optimiser steps (as collect and annotate show samples), with the loss.

    Lightning's own bar restarts every epoch and adds a bar per validation; a run counted in
    steps reads better as one bar from the resumed step to ``max_steps``.
    """

    def __init__(self) -> None:
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.bar = tqdm(
                total=trainer.max_steps,
                initial=trainer.global_step,
                unit="step",
                desc="pretrain",
                dynamic_ncols=True,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_exception = on_train_end  # a Ctrl-C leaves the terminal tidy


def build_trainer(
    cfg: PretrainConfig, out: Path, quiet: bool = False, start_step: int = 0
) -> L.Trainer:
    """The Trainer of a run in ``out``; ``start_step`` is where a resumed run continues (the
    TensorBoard events of later steps, left by the interrupted run, are dropped)."""
    t = cfg.trainer
    logs = out / "logs"
    return L.Trainer(
        max_steps=t.max_steps,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,  # validation counts steps, not epochs
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        logger=[
            RunCSVLogger(logs, name="csv", version=LOG_VERSION),
            TensorBoardLogger(
                logs, name="tensorboard", version=LOG_VERSION, purge_step=start_step or None
            ),
        ],
        callbacks=[
            CommittedCheckpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT, t.checkpoint_every_n_steps),
            StepSeed(cfg.seed),
            *([] if quiet else [StepProgress()]),
        ],
        enable_checkpointing=False,  # CommittedCheckpoint instead of ModelCheckpoint
        enable_progress_bar=False,  # StepProgress instead
        # The layer table is framework detail; --debug shows it (see cli.quiet_frameworks).
        enable_model_summary=logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO),
    )


def metrics_path(out: Path) -> Path:
    """The run's CSV metrics (every training and validation row, across resumes)."""
    return out / "logs" / "csv" / f"version_{LOG_VERSION}" / "metrics.csv"


def dataset_record(dm: SemoreDataModule) -> dict:
    """Which dataset the encoder saw, so guided fine-tuning finds it by default: the folder as an
    absolute path (or the hf:// URL with its revision) and the manifest's hash."""
    record = dm.info.dataset_id()
    if isinstance(dm.info.root, Path):
        record["path"] = str(dm.info.root.resolve())
    return record


def pretrain_heads(module: SemorePretrainModule) -> dict:
    """The heads and loss temperatures with what rebuilds them (the export's ``heads``)."""
    hp = module.hparams
    if module.is_atc:
        return atc_heads(module)
    model = module.model
    return {
        "model": {
            "text_dim": model.text_dim,
            "motion_dim": model.motion_dim,
            "action_dim": model.action_dim,
            "heads_read": model.heads_read,
            "state_dim": hp.state_dim if hp.state_weight > 0 else 0,
        },
        "loss": {name: hp[name] for name in HEAD_LOSS_FIELDS},
        "state_dict": {
            key: value.detach().cpu()
            for key, value in model.state_dict().items()
            if not key.startswith("encoder.")
        },
        "loss_state_dict": {k: v.detach().cpu() for k, v in module.loss.state_dict().items()},
    }


def atc_heads(module: SemorePretrainModule) -> dict:
    """ATC's predictor, contrast and momentum encoder with what rebuilds them, tagged with the
    objective so that no reader takes them for the method's heads."""
    hp, model = module.hparams, module.model
    return {
        "objective": "atc",
        "model": {
            "frame_stack": model.frame_stack,
            "temporal_shift": model.temporal_shift,
            "hidden_dim": hp.atc_hidden_dim,
        },
        "momentum_tau": hp.atc_momentum_tau,
        "state_dict": {
            key: value.detach().cpu()
            for key, value in model.state_dict().items()
            if not key.startswith("encoder.")
        },
    }


def export_metadata(cfg: PretrainConfig, dm: SemoreDataModule, global_step: int) -> dict:
    stats = dm.stats
    return {
        "dataset": dataset_record(dm),
        "motion_targets": [list(t) for t in dm.info.motion_targets],
        "motion_mean": stats.motion_mean.tolist(),
        "motion_std": stats.motion_std.tolist(),
        "reward_mean": stats.reward_mean,
        "reward_std": stats.reward_std,
        # What the no-language control's state term was standardised with (guided reads it).
        "state_mean": stats.state_mean.tolist(),
        "state_std": stats.state_std.tolist(),
        "embedding_dim": dm.info.embedding_dim,
        "holdout_every": cfg.data.holdout_every,
        "heldout_episodes": dm.stats.heldout_episodes,
        "config": to_dict(cfg),
        # What made the export, for reports that cite it: the command without --resume
        # reproduces it (a resumed run ends as an uninterrupted one).
        "command": mf.command_line().replace(" --resume", ""),
        "global_step": global_step,
    }


def pretrain(
    cfg: PretrainConfig, data: str | Path, out: Path, resume: bool = False, quiet: bool = False
) -> Path | None:
    """Train (or resume) a run in ``out`` and export ``out/encoder.pt``.

    Returns the export's path on the rank that wrote it (global rank 0), else None.
    """
    ckpt_path = prepare_run(cfg, out, resume)
    start_step = checkpoint_step(ckpt_path) if ckpt_path is not None else 0
    dm = SemoreDataModule(
        data, cfg.data, seed=cfg.seed, start_batch=start_step, extra_frames=extra_frames(cfg)
    )
    check_memory(cfg, dm.image_hw)  # before the first pass over the data
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, dm)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG_NAME, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    # Rows after the checkpoint are logged again; a new run starts a new file.
    keep_metrics_before(metrics_path(out), start_step)

    trainer = build_trainer(cfg, out, quiet, start_step)
    if not dm.stats.heldout_episodes:
        log.warning(
            "no held-out episodes (data.holdout_every=%d): validation is off",
            cfg.data.holdout_every,
        )
        trainer.limit_val_batches = 0
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) after a graceful shutdown.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return None
    export = out / ENCODER_EXPORT
    metadata = export_metadata(cfg, dm, trainer.global_step)
    save_encoder(export, module.encoder, metadata, heads=pretrain_heads(module))
    log.info("exported the encoder at step %d to %s", trainer.global_step, export)
    return export


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-pretrain", "Pretrain the dual-stream encoder on raw + annotation shards."
    )
    parser.add_argument("--config", required=True, help="YAML file or preset name, e.g. quickstart")
    parser.add_argument(
        "--data",
        required=True,
        help="dataset folder with raw and annotation shards, or hf://datasets/ORG/NAME[@REVISION]",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, logs, encoder.pt)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/last.ckpt (the global step continues)",
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(PretrainConfig, args.config, overrides, stage="pretrain")
    with FolderLock(args.out, "pretrain"):
        export = pretrain(cfg, args.data, args.out, resume=args.resume, quiet=args.quiet)
    if export is not None:
        print(f"{args.out}: encoder exported to {export}")


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
