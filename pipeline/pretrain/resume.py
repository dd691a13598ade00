"""Exact resumption of pretraining: committed checkpoints, per-step seeds, one metrics file.

A run resumed with ``--resume`` after a kill at any point trains on the same batches with
the same random draws as an uninterrupted run, and ends with the same weights, metrics
rows and export. Three parts make that so (the data order is ``TrainStream``'s):

- ``CommittedCheckpoint``: the checkpoint of step S is written where Lightning's own
  step checkpoints are (the end of the training batch, the loop state Lightning's resume
  expects), but under a temporary name; it becomes ``last.ckpt`` only once step S is
  complete: its validation has run and every metrics row up to it is on disk. A kill
  before that leaves the previous ``last.ckpt``, so no validation is ever lost (Lightning
  skips the validation of the step it resumes at: here it has always run).
- ``StepSeed``: torch, numpy and Python's RNGs are reseeded from (seed, step) before every
  training step, so the augmentation's draws at a step do not depend on what ran before
  (data loader start-up and validation draw from the global RNG too) and no RNG state
  needs saving.
- ``RunCSVLogger`` + ``keep_metrics_before``: one ``metrics.csv`` per run; a resume cuts it
  back to the rows of the steps the checkpoint holds and appends after them (Lightning's
  CSV logger would delete the file).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from pipeline.lock import tmp_owner_gone

log = logging.getLogger(__name__)

PENDING_MARK = ".pending-"  # `.last.ckpt.pending-<pid>`: written, not yet committed


def pending_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f".{checkpoint.name}{PENDING_MARK}{os.getpid()}")


def remove_dead_pending(checkpoint_dir: Path) -> None:
    """Delete uncommitted checkpoints of killed runs (those of a live pid are not ours)."""
    if not checkpoint_dir.is_dir():
        return
    for path in checkpoint_dir.glob(f".*{PENDING_MARK}*"):
        if tmp_owner_gone(path.name.rpartition(PENDING_MARK)[2]):
            path.unlink(missing_ok=True)


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (one-line error if unreadable)."""
    try:
        # mmap: only the small header is read; the tensors are not loaded
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["global_step"])
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise SemoreError(
            f"{path} is not a readable pretraining checkpoint ({type(err).__name__}): expected "
            "a last.ckpt written by semore-pretrain (delete the run folder to start over)"
        ) from None


class CommittedCheckpoint(Callback):
    """``last.ckpt`` every ``every_n_steps`` and at the last step, committed once complete.

    Written at the end of step S's training batch (as Lightning's ModelCheckpoint does),
    to a temporary name, and renamed to ``last.ckpt`` at the start of the next batch or at
    the end of training: after step S's validation and after the loggers wrote every row
    up to it. On an exception (Ctrl-C included) the uncommitted file is removed.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self._pending: Path | None = None

    def state_dict(self) -> dict:
        # CPU float sums split over another number of threads round differently.
        return {"torch_threads": torch.get_num_threads()}

    def load_state_dict(self, state_dict: dict) -> None:
        threads = state_dict.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            log.warning(
                "--resume: torch uses %d threads, the checkpoint was written with %d: the run "
                "goes on correctly but not bit for bit as it would have",
                torch.get_num_threads(),
                threads,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step >= trainer.max_steps:
            self._pending = pending_path(self.path)
            trainer.save_checkpoint(self._pending)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._commit(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._commit(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.unlink(missing_ok=True)

    def _commit(self, trainer) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for logger in trainer.loggers:
            logger.save()  # the rows up to this step, before the checkpoint that says so
        if trainer.is_global_zero:
            with open(pending, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(pending, self.path)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A seed for the RNGs of ``rank`` at ``step``: independent streams for neighbouring steps
    and for the ranks of a DDP run (each augments its own batch differently)."""
    return int(np.random.SeedSequence([seed % 2**32, step, rank]).generate_state(1)[0])


class StepSeed(Callback):
    """Reseed torch (CPU and CUDA), numpy and Python's ``random`` before every training step
    from (seed, global step, rank): a resumed step draws what the uninterrupted step drew."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        value = step_seed(self.seed, trainer.global_step, trainer.global_rank)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing the metrics file it finds instead of deleting it,
    and replacing it atomically when its header grows (a kill cannot truncate it)."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as handle:
                self.metrics_keys = next(csv.reader(handle), [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        atomic_write(path, _csv_text(fieldnames, rows))


class RunCSVLogger(CSVLogger):
    """A CSVLogger whose ``metrics.csv`` a resumed run continues (see ``keep_metrics_before``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


def _csv_text(fieldnames: list[str], rows: list[dict]) -> str:
    """Rows as Lightning's CSV writer writes them (csv's default dialect, CRLF line ends)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def keep_metrics_before(path: Path, step: int) -> None:
    """Cut ``metrics.csv`` back to the rows logged before ``step`` (all rows of the steps a
    checkpoint at ``step`` holds: Lightning logs step S's rows as ``step`` S - 1); no rows
    (a new run) removes the file. A last row cut short by a kill has no line end and goes.
    """
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        text = handle.read()
    text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [row for row in reader if row.get("step") and int(row["step"]) < step]
    if not rows or not reader.fieldnames:
        path.unlink()
        return
    kept = _csv_text(list(reader.fieldnames), rows)
    if kept != text:
        atomic_write(path, kept)
