"""A study goes on from its committed results folder when the study folder is gone (a fresh
checkout): encoders restored, not pretrained; the dataset checked; kept runs not rerun."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.compare.carry import check_study
from pipeline.compare.config import CompareConfig
from pipeline.compare.run import main
from pipeline.config import from_dict
from pipeline.errors import SemoreError
from tests.test_compare_run import dataset_study


def _run(config, out, report, capsys, *flags: str) -> tuple[int, str]:
    code = main(["--config", str(config), "--out", str(out), "--report", str(report), *flags])
    return code, capsys.readouterr().err


@pytest.fixture
def finished_study(tmp_path, capsys):
    """A one-seed study run once into ``report``, then its study folder deleted."""
    config, out, report = tmp_path / "study.yaml", tmp_path / "out", tmp_path / "results"
    config.write_text(yaml.safe_dump(dataset_study()))
    assert _run(config, out, report, capsys)[0] == 0
    before = json.loads((report / "results.json").read_text())
    shutil.rmtree(out)  # a fresh checkout: only the committed results folder is left
    return config, out, report, before


def test_a_study_goes_on_from_its_results_folder(finished_study, capsys):
    config, out, report, before = finished_study
    study = yaml.safe_load(config.read_text())
    study["seeds"] = [0, 1]  # the next session adds a seed
    config.write_text(yaml.safe_dump(study))
    code, err = _run(config, out, report, capsys)
    assert code == 0
    assert "tiny seed 0 done" not in err  # the encoder was restored, not pretrained again
    assert (out / "encoders" / "tiny" / "encoder.pt").read_bytes() == (
        report / "encoders" / "tiny.pt"
    ).read_bytes()
    assert "2 runs, 2 at a time" in err  # seed 1 only: seed 0 is kept
    assert not (out / "runs" / "scratch" / "seed0").exists()
    after = json.loads((report / "results.json").read_text())
    for arm in ("scratch", "tiny_frozen"):
        assert after["arms"][arm]["seeds"] == [0, 1]
        assert after["arms"][arm]["scores"][0] == before["arms"][arm]["scores"][0]
        kept_cpu = before["arms"][arm]["cpu_s_per_seed"]["0"]
        assert after["arms"][arm]["cpu_s_per_seed"]["0"] == kept_cpu
    commands = (report / "commands.sh").read_text().splitlines()
    assert sum(line.startswith("semore-finetune ") for line in commands) == 4  # kept ones too
    # Nothing left to do but the dataset's (idempotent) commands: no pretraining, no run.
    shutil.rmtree(out)
    assert main(["--config", str(config), "--out", str(out), "--report", str(report),
                 "--print-commands"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "semore-pretrain" not in printed and "semore-finetune" not in printed


def test_kept_runs_of_another_study_are_a_one_line_error(finished_study, capsys):
    config, out, report, _ = finished_study
    study = yaml.safe_load(config.read_text())
    study["num_eval_episodes"] = 2
    config.write_text(yaml.safe_dump(study))
    code, err = _run(config, out, report, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1  # before anything is built
    assert "differs from this study in num_eval_episodes" in err
    assert not out.exists()


def test_a_different_rebuilt_dataset_is_a_one_line_error(finished_study, capsys):
    config, out, report, _ = finished_study
    # As if the collect preset had changed since: the kept runs saw other episodes.
    kept = json.loads((report / "dataset.json").read_text())
    kept["raw"]["totals"]["num_samples"] += 1
    (report / "dataset.json").write_text(json.dumps(kept))
    code, err = _run(config, out, report, capsys, "--quiet")
    last = err.strip().splitlines()[-1]  # after the dataset stages' progress bars
    assert code == 2 and last.startswith("semore-compare: error: ") and "Traceback" not in err
    assert "differs from the one the runs in" in last and "(in raw.totals;" in last
    assert (report / "runs" / "scratch-seed0.csv").is_file()  # nothing kept is lost


def test_a_study_may_add_encoders_but_not_change_one(finished_study):
    """Adding an encoder (and its arm) to a study goes on from its results folder; changing an
    encoder that kept runs were made with is refused."""
    _, _, report, _ = finished_study
    study = dataset_study()
    study["encoders"]["tiny_more"] = {"config": "quickstart"}
    check_study(from_dict(CompareConfig, study), report)  # an added encoder: fine
    study["encoders"]["tiny"]["overrides"]["encoder"]["num_filters"] = 4
    with pytest.raises(SemoreError, match="differs from this study in encoders.tiny:"):
        check_study(from_dict(CompareConfig, study), report)
