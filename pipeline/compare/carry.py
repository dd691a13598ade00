"""A study that outlives its study folder: the committed results folder carries it on.

A study longer than one session (or one machine) goes on from a fresh checkout, where the
study folder (``OUT``: dataset, encoders, run folders) is gone and only the results folder
(``--report``) was kept. The results folder holds what a rerun needs: each study encoder's
export (``encoders/NAME.pt``), the dataset's fingerprint (``dataset.json``), the study
config (``study.yaml``) and the finished runs (``runs/ARM-seedS.csv``, their CPU time in
``results.json``). Given the same ``--report``, a rerun

- restores the encoders instead of pretraining them again (pretraining is not bit for bit
  reproducible across machines, and every run of a study must see the same encoder);
- checks that the dataset it rebuilt is the one the kept runs used (collection is seeded);
- counts a run the folder holds to the study's budget as finished and reports it as kept.

Only a results folder named with ``--report`` carries a study on: the default one,
``OUT/report``, is rebuilt from ``OUT``'s own runs, which are the record there.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.compare.config import CompareConfig
from pipeline.compare.jobs import Job
from pipeline.compare.records import RunRecord, from_results, rows_up_to
from pipeline.compare.results_schema import (
    DATASET_NAME,
    STUDY_NAME,
    check_results_folder,
    read_dataset_fingerprint,
)
from pipeline.config import load_config, to_dict
from pipeline.data import manifest as mf
from pipeline.data.schema import MANIFEST_NAME
from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from pipeline.pretrain.run import ENCODER_EXPORT
from semore.encoder import load_encoder_metadata

log = logging.getLogger(__name__)

ENCODERS_DIR = "encoders"
# Settings that do not change what a run computes: more seeds, another report, other cores.
_NOT_RUN_SETTINGS = (
    "seeds",
    "jobs",
    "launcher",
    "report_steps",
    "reference_arm",
    "bootstrap_reps",
    "unmatched_ok",
    "arms",
    "baseline_arms",
    "also_compare_to",
    "continue_best",  # which arms go on; the arms themselves are compared one by one
    "encoders",  # compared one by one: a study may add encoders (check_study)
)
# The dataset's fingerprint: what was asked for and what came out, not where or by which
# commit it was built (the manifest's own hash changes with those).
_DATASET_KEYS = ("config_hash", "totals")


def kept_export(folder: Path, name: str) -> Path:
    return folder / ENCODERS_DIR / f"{name}.pt"


def save_encoders(study: Path, folder: Path) -> None:
    """Copy each study encoder's export into the results folder (~6 MB for the default encoder with its pretraining heads)."""
    for export in sorted((study / ENCODERS_DIR).glob(f"*/{ENCODER_EXPORT}")):
        target = kept_export(folder, export.parent.name)
        if not target.is_file() or target.read_bytes() != export.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, export.read_bytes())


def restore_encoders(cfg: CompareConfig, out: Path, folder: Path | None) -> list[str]:
    """Put the results folder's encoder exports where the study would pretrain them; returns
    the names restored. An encoder already in ``out`` is left alone."""
    restored: list[str] = []
    for name in cfg.encoders if folder is not None else ():
        kept, target = kept_export(folder, name), out / ENCODERS_DIR / name / ENCODER_EXPORT
        if kept.is_file() and not target.is_file():
            try:  # a damaged export is refused here, not copied into the study
                load_encoder_metadata(kept)
            except ValueError as err:
                raise SemoreError(str(err)) from None
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept, target)
            restored.append(name)
            log.info("encoder %s restored from %s (not pretrained again)", name, kept)
    return restored


def _fingerprint(parts: dict) -> dict:
    return {
        part: {k: parts[part].get(k) for k in _DATASET_KEYS}
        for part in ("raw", "ann")
        if part in parts
    }


def check_dataset(out: Path, folder: Path | None) -> None:
    """Refuse to go on when the rebuilt dataset differs from the kept runs' dataset."""
    if folder is None:
        return
    kept_file, manifest_file = folder / DATASET_NAME, out / "data" / MANIFEST_NAME
    if not kept_file.is_file() or not manifest_file.is_file() or not kept_runs(folder):
        return
    kept = _fingerprint(read_dataset_fingerprint(folder))
    built = _fingerprint(mf.read_manifest(out / "data"))
    differ = [
        f"{part}.{key}"
        for part in kept.keys() | built.keys()
        for key in _DATASET_KEYS
        if kept.get(part, {}).get(key) != built.get(part, {}).get(key)
    ]
    if differ:
        raise SemoreError(
            f"the study dataset {out / 'data'} differs from the one the runs in {folder} used "
            f"(in {', '.join(sorted(differ))}; see {kept_file}): expected the same collect and "
            "annotate configs, or a new --report folder"
        )


def kept_runs(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted((folder / "runs").glob("*-seed*.csv"))


def check_study(cfg: CompareConfig, folder: Path | None) -> None:
    """Refuse to go on from a results folder whose runs come from another study: every setting
    that changes a run, and every arm and encoder both hold, must be equal (seeds, arms and
    encoders may be added)."""
    if folder is not None and folder.is_dir():
        check_results_folder(folder)  # before anything is built or written for it
    if not kept_runs(folder) or not (folder / STUDY_NAME).is_file():
        return
    kept = to_dict(load_config(CompareConfig, folder / STUDY_NAME))  # typed, as the report reads it
    now = to_dict(cfg)
    differ = [k for k in now if k not in _NOT_RUN_SETTINGS and kept.get(k) != now[k]]
    for section in ("arms", "encoders"):
        both = sorted(set(now[section]) & set(kept.get(section) or {}))
        differ += [f"{section}.{a}" for a in both if kept[section][a] != now[section][a]]
    if differ:
        raise SemoreError(
            f"{folder / 'study.yaml'} differs from this study in {', '.join(differ)}: its runs "
            "are not this study's; expected the same study config, or a new --report folder"
        )


def _reaches(rec: RunRecord, num_train_steps: int) -> bool:
    return any(int(r["step"]) >= num_train_steps for r in rec.eval_rows())


def carried_records(
    num_train_steps: int, folder: Path | None, todo: list[Job]
) -> dict[Job, RunRecord]:
    """The results folder's records of the unfinished ``todo`` jobs that it holds up to
    ``num_train_steps``, keyed by job (each record gets its job's command for commands.sh)."""
    if folder is None or not kept_runs(folder):
        return {}
    records = {(r.arm, r.seed): r for r in from_results(folder)}
    found = {job: records[job.arm, job.seed] for job in todo if (job.arm, job.seed) in records}
    found = {job: rec for job, rec in found.items() if _reaches(rec, num_train_steps)}
    for job, rec in found.items():
        path = folder / "runs" / f"{rec.arm}-seed{rec.seed}.csv"
        rec.csv_text = rows_up_to(path, num_train_steps)
        rec.argv = job.argv
    return found
