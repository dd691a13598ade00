"""Encoder exports and study results folders from strangers: checked before use.

An export whose config or metadata lies is refused before a model is built; a results
folder whose ``results.json``, run CSVs, ``dataset.json`` or ``study.yaml`` is damaged is
refused before a report is rebuilt or a study goes on from it. Each refusal is one line
naming the file, the field, the value and what was expected; nothing is written.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.compare.results_schema import check_results_folder
from pipeline.compare.run import main as compare_main
from pipeline.finetune.run import main as finetune_main
from pipeline.pretrain.probe import main as probe_main
from semore.encoder import SemoreEncoder, load_export, save_encoder
from tests.conftest import write_synthetic_raw
from tests.test_hostile_datasets import one_line_error, snapshot

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results"
STUDY = "tune_smooth"  # a committed results folder with runs, an encoder and dataset.json


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_raw(tmp_path_factory.mktemp("files") / "data")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A small export with the metadata semore-pretrain writes."""
    torch.manual_seed(0)
    path = tmp_path / "encoder.pt"
    metadata = {
        "dataset": {"path": "/data", "manifest_sha256": "ab", "num_samples": 24},
        "motion_targets": [["speed", "m/s"]],
        "motion_mean": [20.0],
        "motion_std": [2.0],
        "reward_mean": 1.0,
        "reward_std": 0.5,
        "embedding_dim": 8,
        "holdout_every": 4,
        "heldout_episodes": [3],
        "global_step": 10,
    }
    save_encoder(path, SemoreEncoder(3, 32, 32, num_filters=4, repr_dim=8), metadata)
    return path


def edit_export(path: Path, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


EXPORT_CASES = [
    ("negative num_samples", lambda p: p["metadata"]["dataset"].__setitem__("num_samples", -504),
     "export.metadata.dataset.num_samples is -504: expected an int in [0, 1e12]"),
    ("holdout_every a string", lambda p: p["metadata"].__setitem__("holdout_every", "4"),
     "export.metadata.holdout_every is '4': expected an int"),
    ("zero motion std", lambda p: p["metadata"].__setitem__("motion_std", [0.0]),
     "export.metadata.motion_std[0] is 0.0: expected a number > 0"),
    ("motion lengths", lambda p: p["metadata"].__setitem__("motion_mean", [1.0, 2.0]),
     "expected as many entries as motion_targets and motion_mean"),
    ("huge num_filters", lambda p: p["config"].__setitem__("num_filters", 10**29),
     "export.config.num_filters is 1e+29: expected an int in [1, 1024]"),
    ("bool frame_stack", lambda p: p["config"].__setitem__("frame_stack", True),
     "export.config.frame_stack is True: expected an int in [1, 16]"),
    ("weights a list", lambda p: p.__setitem__("state_dict", [1, 2]),
     "export.state_dict is [1, 2]: expected a mapping"),
    ("heads without a model", lambda p: p.__setitem__("heads", {"loss": {}}),
     "export.heads.model is missing: expected a mapping"),
]  # fmt: skip


@pytest.mark.parametrize("case, edit, message", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_a_lying_export_is_refused_before_a_model_is_built(export, case, edit, message):
    edit_export(export, edit)
    with pytest.raises(ValueError, match=rf"^encoder file {export}: ") as err:
        load_export(export)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", [0, 4], ids=["negative num_samples", "huge num_filters"])
def test_probe_and_finetune_refuse_a_lying_export_and_write_nothing(
    export, raw_data, tmp_path, capsys, case
):
    _, edit, message = EXPORT_CASES[case]
    edit_export(export, edit)
    out = tmp_path / "out"
    probe = ["--encoder", str(export), "--data", str(raw_data), "--out", str(out / "p.json")]
    assert probe_main(probe) == 2
    assert message in one_line_error(capsys, "semore-probe")
    finetune = ["--config", "quickstart", "--encoder", str(export), "--out", str(out)]
    assert finetune_main(finetune) == 2
    assert message in one_line_error(capsys, "semore-finetune")
    assert not out.exists()


def test_a_bare_pickle_is_one_line_without_a_torch_warning(raw_data, tmp_path):
    bare = tmp_path / "encoder.pt"
    bare.write_bytes(pickle.dumps({"format": "semore-encoder"}, protocol=4))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.pretrain.probe", "--encoder", str(bare),
         "--data", str(raw_data)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"semore-probe: error: encoder file {bare} is not a readable torch file "
        "(UnpicklingError); expected format 'semore-encoder'"
    ]


# ---- study results folders ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.parent.name for p in COMMITTED.glob("*/results.json")))
def test_every_committed_results_folder_passes(name):
    check_results_folder(COMMITTED / name)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return Path(shutil.copytree(COMMITTED / STUDY, tmp_path / "results"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _arm(data: dict) -> dict:
    return data["arms"]["guided_ent4"]


def _edit_csv(path: Path, line: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[line - 1].split(",")
    row[header.index(column)] = value
    lines[line - 1] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")


RUN = "runs/guided_ent4-seed102.csv"
RESULTS_CASES = [
    ("cpu seconds a string",
     lambda f: _edit_json(f / "results.json", lambda d: _arm(d)["cpu_s_per_seed"].__setitem__("102", "fast")),
     "results.json: results.arms.guided_ent4.cpu_s_per_seed.102 is 'fast': expected a number >= 0"),
    ("a score row short of the steps",
     lambda f: _edit_json(f / "results.json", lambda d: _arm(d)["scores"][0].pop()),
     "results.json: arms.guided_ent4.scores[0] has 4 values: expected one per step (5)"),
    ("reference NaN",
     lambda f: _edit_json(f / "results.json", lambda d: d["reference"].__setitem__("expert_return", float("nan"))),
     "results.json: results.reference.expert_return is nan: expected a finite number"),
    ("results not JSON", lambda f: (f / "results.json").write_text("{arms"),
     "results.json is not valid JSON (JSONDecodeError)"),
    ("run step not a number", lambda f: _edit_csv(f / RUN, 3, "step", "abc"),
     f"{RUN}: line 3.step is 'abc': expected an int in [0, 1e9]"),
    ("run wall time NaN", lambda f: _edit_csv(f / RUN, 2, "wall_time_s", "nan"),
     f"{RUN}: line 2.wall_time_s is nan: expected a number >= 0"),
    ("run file of no seed", lambda f: shutil.copy(f / RUN, f / "runs" / "guided-seedX.csv"),
     "guided-seedX.csv is not named ARM-seedS.csv"),
    ("dataset hash", lambda f: _edit_json(f / "dataset.json", lambda d: d.__setitem__("manifest_sha256", "zz")),
     "dataset.json: dataset.manifest_sha256 is 'zz': expected a hex sha256"),
    ("study seeds past 32 bits",
     lambda f: (f / "study.yaml").write_text((f / "study.yaml").read_text().replace("seeds:\n- 102", f"seeds:\n- {10**29}")),
     "study.yaml.seeds[0] is 1e+29: expected an int in [0, 4294967295]"),
]  # fmt: skip


@pytest.mark.parametrize("case, edit, message", RESULTS_CASES, ids=[c[0] for c in RESULTS_CASES])
def test_report_rebuild_refuses_a_damaged_results_folder(results, capsys, case, edit, message):
    edit(results)
    before = snapshot(results)
    assert compare_main(["--from-results", str(results), "--bootstrap_reps", "300"]) == 2
    assert message in one_line_error(capsys, "semore-compare")
    assert snapshot(results) == before


@pytest.mark.parametrize("case", [0, 4], ids=["cpu seconds a string", "run step not a number"])
def test_a_study_does_not_go_on_from_a_damaged_results_folder(results, tmp_path, capsys, case):
    _, edit, message = RESULTS_CASES[case]
    edit(results)
    out = tmp_path / "study"
    argv = ["--config", str(COMMITTED / STUDY / "study.yaml"), "--out", str(out), "--report"]
    assert compare_main([*argv, str(results), "--print-commands"]) == 2
    assert message in one_line_error(capsys, "semore-compare")
    assert not out.exists()


def test_a_damaged_kept_encoder_is_not_restored(results, tmp_path, capsys):
    (results / "encoders" / "semore.pt").write_bytes(pickle.dumps([1, 2], protocol=4))
    out = tmp_path / "study"
    argv = ["--config", str(COMMITTED / STUDY / "study.yaml"), "--out", str(out), "--report"]
    assert compare_main([*argv, str(results), "--print-commands"]) == 2
    assert "encoders/semore.pt is not a readable torch file" in one_line_error(
        capsys, "semore-compare"
    )
    assert not (out / "encoders").exists()
