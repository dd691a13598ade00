"""Reference scores (expert and uniform-random returns) shared by the runs of a study: the
expert drives the evaluation episodes once per task, not once per run."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.finetune import reference
from pipeline.finetune.eval import read_metrics
from pipeline.finetune.run import main
from tests.test_finetune import TINY


@pytest.fixture
def measured(monkeypatch) -> list[int]:
    """How many evaluation episodes the expert was measured on, call by call."""
    calls: list[int] = []
    real = reference.compute_reference

    def counting(cfg, driver):
        calls.append(cfg.num_eval_episodes)
        return real(cfg, driver)

    monkeypatch.setattr(reference, "compute_reference", counting)
    return calls


def run(out, shared, *extra: str) -> None:
    torch.set_num_threads(1)
    argv = [*TINY, "--encoder", "none", "--out", str(out), "--num-train-steps", "12",
            "--shared-reference", str(shared), *extra]  # fmt: skip
    assert main(argv) == 0


def test_runs_on_one_task_measure_the_expert_once(tmp_path, measured):
    shared = tmp_path / "reference"
    run(tmp_path / "a", shared)
    run(tmp_path / "b", shared, "--seed", "1")
    assert measured == [1]  # TINY evaluates on 1 episode; b reused a's measurement
    a, b = (json.loads((tmp_path / r / "reference.json").read_text()) for r in "ab")
    assert a == b and a["expert_return"] > a["random_return"]
    assert len(list(shared.glob("reference-*.json"))) == 1
    rows = [r for r in read_metrics(tmp_path / "b" / "metrics.csv") if r["phase"] == "eval"]
    span = a["expert_return"] - a["random_return"]
    for row in rows:  # b's scores are normalised by the shared measurement
        expected = (float(row["episode_return"]) - a["random_return"]) / span
        assert float(row["normalized_return"]) == pytest.approx(expected, rel=1e-4)


def test_another_task_is_measured_on_its_own(tmp_path, measured):
    shared = tmp_path / "reference"
    run(tmp_path / "a", shared)
    run(tmp_path / "b", shared, "--num_eval_episodes", "2")
    assert measured == [1, 2]
    assert len(list(shared.glob("reference-*.json"))) == 2
