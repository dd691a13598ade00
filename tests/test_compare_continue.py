"""A continuation study (``continue_best``): the best method arm and the strongest baseline of
the shorter study in the same --out go on, picked on their IQM there; the pick is written into
the results folder and read back from it; an unfinished shorter study is a one-line error."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.compare.config import CompareConfig
from pipeline.compare.continuation import continued
from pipeline.compare.run import main
from pipeline.config import load_config
from pipeline.errors import SemoreError

FIELDS = ["phase", "step", "episode", "episode_return", "distance_m", "mean_abs_steer",
          "wall_time_s", "normalized_return"]  # fmt: skip
# arm -> score of its runs at every evaluation: m2 is the best method arm, b1 the best baseline
SCORES = {"m1": 0.3, "m2": 0.6, "b1": 0.5, "b2": 0.2}


def _study(tmp_path: Path, num_train_steps: int = 4) -> Path:
    study = {
        "finetune": "quickstart",
        "arms": {arm: {"encoder": "none"} for arm in SCORES},
        "seeds": [0, 1],
        "num_train_steps": num_train_steps,
        "eval_every_steps": 2,
        "num_eval_episodes": 1,
        "bootstrap_reps": 100,
        "baseline_arms": ["b1", "b2"],
        "reference_arm": "strongest",
        "also_compare_to": ["b2"],
        "continue_best": {"from_step": 2},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _runs(out: Path, last_step: int, short: tuple[str, int] | None = None) -> None:
    """Run folders evaluated every 2 steps up to ``last_step`` (``short``: one run stopped at 0)."""
    for arm, score in SCORES.items():
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed{seed}"
            run.mkdir(parents=True)
            stop = 0 if (arm, seed) == short else last_step
            with (run / "metrics.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
                for step in range(0, stop + 1, 2):
                    writer.writerow({"phase": "eval", "step": step, "episode": 0,
                                     "episode_return": score, "distance_m": 100.0,
                                     "mean_abs_steer": 0.1, "wall_time_s": step,
                                     "normalized_return": score + 0.01 * seed})  # fmt: skip
            summary = {"step": stop, "wall_time_s": float(stop)}
            (run / "summary.json").write_text(json.dumps(summary))


def test_the_best_method_arm_and_the_strongest_baseline_go_on(tmp_path, capsys):
    config, out = _study(tmp_path), tmp_path / "out"
    _runs(out, last_step=2)
    assert main(["--config", str(config), "--out", str(out), "--print-commands"]) == 0
    printed = capsys.readouterr().out
    runs = [line for line in printed.splitlines() if line.startswith("semore-finetune")]
    ran = {line.split("--out ")[1].split()[0] for line in runs}
    assert ran == {str(out / "runs" / arm / f"seed{s}") for arm in ("m2", "b1") for s in (0, 1)}
    cfg = continued(load_config(CompareConfig, config, stage="compare"), out)
    assert list(cfg.arms) == ["m2", "b1"] and cfg.baseline_arms == ["b1"]
    assert cfg.also_compare_to == []  # b2 stopped at the shorter budget: nothing to compare
    assert cfg.continue_best.picked == pytest.approx({"m2": 0.605, "b1": 0.505})


def test_the_pick_is_kept_in_the_results_folder(tmp_path, capsys):
    config, out, report = _study(tmp_path), tmp_path / "out", tmp_path / "report"
    _runs(out, last_step=4)  # as if the continued runs had finished
    argv = ["--config", str(config), "--out", str(out), "--report", str(report), "--report-only"]
    assert main(argv) == 0
    kept = yaml.safe_load((report / "study.yaml").read_text())
    assert set(kept["arms"]) == {"m2", "b1"}
    assert kept["continue_best"]["picked"] == pytest.approx({"m2": 0.605, "b1": 0.505})
    table = (report / "table.md").read_text()
    assert "Continued from step 2: m2 (0.60), b1 (0.51)" in table
    # The run folders gone, the folder's own pick decides (a fresh checkout, --from-results).
    for arm in SCORES:
        for seed in (0, 1):
            (out / "runs" / arm / f"seed{seed}" / "metrics.csv").unlink()
    cfg = continued(load_config(CompareConfig, config, stage="compare"), out, report)
    assert list(cfg.arms) == ["m2", "b1"]
    assert main(["--from-results", str(report)]) == 0
    assert "m1" not in (report / "table.md").read_text()


def test_an_unfinished_shorter_study_is_a_one_line_error(tmp_path, capsys):
    config, out = _study(tmp_path), tmp_path / "out"
    _runs(out, last_step=2, short=("b2", 1))
    assert main(["--config", str(config), "--out", str(out), "--print-commands"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 of 8 runs have not reached it (first: b2 seed 1" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"continue_best": {"from_step": 4}}, "from 1 to below num_train_steps (4)"),
        ({"baseline_arms": [], "reference_arm": "m1"}, "expected baseline_arms listed"),
        ({"continue_best": {"from_step": 2, "picked": {"x": 0.5}}}, "['x'] are not arms"),
    ],
)
def test_a_wrong_continuation_is_refused(tmp_path, change, message):
    study = yaml.safe_load(_study(tmp_path).read_text())
    study.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    with pytest.raises(SemoreError, match=re.escape(message)):
        load_config(CompareConfig, path, stage="compare")


def _kept_results(tmp_path: Path, config: Path, out: Path) -> Path:
    """The shorter study's results folder, written from its finished runs in ``out``."""
    shorter = yaml.safe_load(config.read_text())
    shorter.pop("continue_best")
    shorter["num_train_steps"] = 2
    path = tmp_path / "shorter.yaml"
    path.write_text(yaml.safe_dump(shorter, sort_keys=False))
    folder = tmp_path / "shorter_report"
    argv = ["--config", str(path), "--out", str(out), "--report", str(folder), "--report-only"]
    assert main(argv) == 0
    return folder


def _continued_from(config: Path, out: Path, folder: Path | None) -> CompareConfig:
    """The continuation of ``config`` with ``continue_best.from_results`` set to ``folder``
    (left out when None), picked over the runs in ``out``."""
    study = yaml.safe_load(config.read_text())
    study["continue_best"].pop("from_results", None)
    if folder is not None:
        study["continue_best"]["from_results"] = str(folder)
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    return continued(load_config(CompareConfig, config, stage="compare"), out)


def test_a_fresh_checkout_picks_from_the_shorter_studys_results_folder(tmp_path):
    config, out = _study(tmp_path), tmp_path / "out"
    _runs(out, last_step=2)
    folder = _kept_results(tmp_path, config, out)
    for run in (out / "runs").glob("*/seed*"):  # the run folders gone, as on a fresh checkout
        (run / "summary.json").unlink()
    cfg = _continued_from(config, out, folder)
    assert list(cfg.arms) == ["m2", "b1"]
    assert cfg.continue_best.picked == pytest.approx({"m2": 0.605, "b1": 0.505})
    # One kept run missing: the pick refuses to read an unfinished shorter study.
    (folder / "runs" / "b2-seed1.csv").unlink()
    with pytest.raises(SemoreError, match=re.escape("lacks 1 of 8 runs (first: b2 seed 1)")):
        _continued_from(config, out, folder)
    with pytest.raises(SemoreError, match="from_results .*nowhere is not a folder"):
        _continued_from(config, out, tmp_path / "nowhere")


def test_the_committed_record_outweighs_a_longer_rerun_in_out(tmp_path):
    """On a fresh checkout a run in --out may be a longer rerun whose first steps differ from the
    shorter study's record: the pick reads the record, so it equals the committed table."""
    config, out = _study(tmp_path), tmp_path / "out"
    _runs(out, last_step=2)
    folder = _kept_results(tmp_path, config, out)
    rerun = out / "runs" / "m1" / "seed0"
    with (rerun / "metrics.csv").open("w", newline="") as f:  # m1 seed 0 rerun to step 4, better
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for step in (0, 2, 4):
            writer.writerow({"phase": "eval", "step": step, "episode": 0, "episode_return": 1.0,
                             "distance_m": 100.0, "mean_abs_steer": 0.1, "wall_time_s": step,
                             "normalized_return": 0.95})  # fmt: skip
    (rerun / "summary.json").write_text(json.dumps({"step": 4, "wall_time_s": 4.0}))
    cfg = _continued_from(config, out, folder)
    assert list(cfg.arms) == ["m2", "b1"]
    assert cfg.continue_best.picked == pytest.approx({"m2": 0.605, "b1": 0.505})
    # Without the record, the same --out picks the rerun's better m1 (IQM of 0.95 and 0.31).
    assert list(_continued_from(config, out, None).arms) == ["m1", "b1"]
