"""Every number a user can set has a range, checked before work starts.

Config fields (YAML and ``--section.field`` overrides) and command-line flags of every stage
refuse values out of range with the allowed range, on one line; sizes that cannot fit in
memory are refused with the estimate; no torch or numpy error reaches the user.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from pipeline import cli, memory
from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.run import main as annotate_main
from pipeline.collect.config import CollectConfig
from pipeline.collect.run import main as collect_main
from pipeline.compare.config import CompareConfig
from pipeline.compare.run import main as compare_main
from pipeline.config import from_dict, load_config
from pipeline.errors import SemoreError
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.run import main as finetune_main
from pipeline.inspect.run import main as inspect_main
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.probe import main as probe_main
from pipeline.pretrain.run import main as pretrain_main
from pipeline.run_all import RunConfig
from pipeline.run_all import main as run_main
from semore.checks import Float, Int, ListOf, show
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import write_synthetic_ann
from tests.test_hostile_datasets import one_line_error

REPO = Path(__file__).resolve().parents[1]
# (config class, the smallest mapping it builds from)
STAGE_CONFIGS = [
    (CollectConfig, {}),
    (AnnotateConfig, {}),
    (PretrainConfig, {}),
    (FinetuneConfig, {}),
    (CompareConfig, {"arms": {"scratch": {}}}),
    (RunConfig, {}),
]
NUMBERS = {int: 2**40, float: 1e300}  # absurd for every field, yet within 64 bits / a float


def numeric_fields(cls: type, prefix: tuple[str, ...] = ()):
    """(dotted path, python type, is a list) of every int and float field, at any depth."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        for arg in typing.get_args(tp) if union else (tp,):
            path = (*prefix, field.name)
            if dataclasses.is_dataclass(arg):
                yield from numeric_fields(arg, path)
            elif arg in NUMBERS:
                yield path, arg, False
            elif typing.get_origin(arg) is list and typing.get_args(arg)[0] in NUMBERS:
                yield path, typing.get_args(arg)[0], True


def nested(path: tuple[str, ...], value: object) -> dict:
    return {path[0]: value} if len(path) == 1 else {path[0]: nested(path[1:], value)}


CASES = [
    (cls, base, path, tp, is_list)
    for cls, base in STAGE_CONFIGS
    for path, tp, is_list in numeric_fields(cls)
]


@pytest.mark.parametrize(
    "cls, base, path, tp, is_list", CASES, ids=[f"{c[0].__name__}.{'.'.join(c[2])}" for c in CASES]
)
def test_every_numeric_config_field_has_a_range(cls, base, path, tp, is_list):
    for bad in (NUMBERS[tp], -NUMBERS[tp]):
        value = [bad] if is_list else bad
        with pytest.raises(SemoreError, match=rf"{path[-1]}\S* is .*: expected") as err:
            from_dict(cls, {**base, **nested(path, value)}, where="cfg.yaml")
        assert "\n" not in str(err.value)
    if tp is int and not is_list:  # a bool is not a count
        with pytest.raises(SemoreError, match=rf"{path[-1]} is True: expected"):
            from_dict(cls, {**base, **nested(path, True)}, where="cfg.yaml")


def test_the_walk_finds_the_fields_of_every_section():
    names = {".".join(c[2]) for c in CASES}
    assert {"episodes", "highway.max_episode_steps", "policy.perturb_steps", "reward.steer_coef",
            "launcher.time_min", "vlm.batch_size", "data.batch_size", "encoder.num_filters",
            "sac.discount", "guide.batch_size", "replay_capacity", "seeds", "report_episodes",
            "carla.camera_yaws_deg", "trainer.limit_val_batches"} <= names  # fmt: skip


def test_a_huge_value_names_the_allowed_range(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  batch_size: {10**29}\n")
    with pytest.raises(SemoreError) as err:
        load_config(PretrainConfig, config)
    assert str(err.value) == f"{config}.data.batch_size is 1e+29: expected an int in [1, 65536]"
    digits = "9" * 5000  # past Python's int-to-text limit: still one line, never a crash
    with pytest.raises(
        SemoreError, match=r"option --data.batch_size is '9999.*\.\.\.: expected a YAML"
    ):
        load_config(PretrainConfig, None, ["--data.batch_size", digits])
    config.write_text(f"data:\n  batch_size: {digits}\n")
    with pytest.raises(SemoreError, match=r"c.yaml holds a number of more than 4300 digits"):
        load_config(PretrainConfig, config)
    with pytest.raises(SemoreError, match=r"optim.lr is 'nan': expected a finite number"):
        load_config(PretrainConfig, None, ["--optim.lr", "nan"])


# (main, its other arguments, the flag and its value, what the one-line error says)
FLAG_CASES = [
    (collect_main, ["--config", "quickstart"], ["--episodes", str(10**29)], "1e+29 is not an int in [1, 1e6]"),
    (collect_main, ["--config", "quickstart"], ["--workers", "0"], "0 is not an int in [1, 1024]"),
    (collect_main, ["--config", "quickstart"], ["--seed", "-1"], "-1 is not an int in [0, 4294967295]"),
    (collect_main, ["--config", "quickstart"], ["--worker-index", "100"], "100 is not an int in [0, 99]"),
    (collect_main, ["--config", "quickstart"], ["--highway.max_episode_steps", str(10**29)],
     "highway.max_episode_steps is 1e+29: expected an int in [1, 100000]"),
    (annotate_main, [], ["--workers", str(10**29)], "1e+29 is not an int in [1, 1024]"),
    (annotate_main, [], ["--vlm.batch_size", "0"], "vlm.batch_size is 0: expected an int in [1, 65536]"),
    (pretrain_main, ["--config", "quickstart", "--data", "d"], ["--data.batch_size", str(10**29)],
     "data.batch_size is 1e+29: expected an int in [1, 65536]"),
    (pretrain_main, ["--config", "quickstart", "--data", "d"], ["--encoder.num_filters", str(10**29)],
     "encoder.num_filters is 1e+29: expected an int in [1, 1024]"),
    (finetune_main, ["--config", "quickstart", "--encoder", "none"], ["--num-train-steps", str(10**29)],
     "1e+29 is not an int in [1, 1e9]"),
    (finetune_main, ["--config", "quickstart", "--encoder", "none"], ["--sac.discount", "1.5"],
     "sac.discount is 1.5: expected a number in [0, 1]"),
    (finetune_main, ["--config", "quickstart", "--encoder", "none"], ["--replay_capacity", str(10**29)],
     "replay_capacity is 1e+29: expected an int in [1, 1e8]"),
    (compare_main, ["--config", "quick"], ["--jobs", "0"], "0 is not an int in [1, 1024]"),
    (compare_main, ["--config", "quick", "--pretrained", "e.pt"], ["--bootstrap_reps", str(10**29)],
     "bootstrap_reps is 1e+29: expected an int in [1, 1e7]"),
    (inspect_main, ["--data", "d"], ["--max-steps", str(10**29)], "1e+29 is not an int in [1, 100000]"),
    (inspect_main, ["--data", "d"], ["--episodes", "0", str(10**6)], "1000000 is not an int in [0, 999999]"),
    (probe_main, ["--encoder", "random", "--data", "d"], ["--batch-size", str(10**29)],
     "1e+29 is not an int in [1, 65536]"),
    (probe_main, ["--encoder", "random", "--data", "d"], ["--holdout-every", "1"], "1 is not an int in [2, 1e6]"),
    (probe_main, ["--encoder", "random", "--data", "d"], ["--alpha", "nan"], "'nan' is not a number in (0, 1e12]"),
    (run_main, ["--config", "quickstart"], ["--report_max_steps", str(10**29)],
     "report_max_steps is 1e+29: expected an int in [1, 100000]"),
]  # fmt: skip


@pytest.mark.parametrize(
    "main, argv, flag, message", FLAG_CASES, ids=[f"{c[0].__module__}{c[2][0]}" for c in FLAG_CASES]
)
def test_flags_and_overrides_out_of_range_are_one_line(tmp_path, capsys, main, argv, flag, message):
    out = tmp_path / "out"
    where = "--data" if main in (annotate_main,) else "--out"
    try:
        code = main([*argv, where, str(out), *flag])
    except SystemExit as exit_:  # argparse refuses a flag's type before the body runs
        code = exit_.code
    assert code == 2
    line = one_line_error(capsys, main.__globals__["build_parser"]().prog)
    assert message in line
    assert not out.exists()


def test_a_huge_episode_count_returns_at_once_in_a_fresh_process(tmp_path):
    """Not the endless planning loop of 10^29 episodes: one line, before any import of torch."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.collect.run", "--config", "quickstart",
         "--out", str(tmp_path / "d"), "--episodes", str(10**29)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "semore-collect: error: argument --episodes: 1e+29 is not an int in [1, 1e6] "
        "(see semore-collect --help)"
    ]
    assert not (tmp_path / "d").exists()


# ---- sizes against the machine's memory -------------------------------------------------


@pytest.fixture
def small_machine(monkeypatch):
    """A machine of 16 MiB, so the estimates of small runs exceed it."""
    monkeypatch.setattr(memory, "total_ram_bytes", lambda: 16 << 20)


@pytest.fixture(scope="module")
def ann_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ann(write_synthetic_raw(tmp_path_factory.mktemp("ranges") / "d"), 8)


def test_a_pretraining_batch_too_big_for_the_machine_is_refused(
    ann_data, tmp_path, small_machine, capsys
):
    out = tmp_path / "run"
    argv = ["--config", "quickstart", "--data", str(ann_data), "--out", str(out)]
    assert pretrain_main([*argv, "--data.batch_size", "512"]) == 2
    line = one_line_error(capsys, "semore-pretrain")
    assert "pretraining at data.batch_size 512 on 32x32 frames needs at least" in line
    assert "conv activations and gradients" in line and "but this machine has 16 MiB" in line
    assert not out.exists()


def test_a_replay_buffer_too_big_for_the_machine_is_refused(tmp_path, small_machine, capsys):
    out = tmp_path / "run"
    argv = ["--config", "quickstart", "--encoder", "none", "--out", str(out)]
    assert finetune_main([*argv, "--replay_capacity", "100000"]) == 2
    line = one_line_error(capsys, "semore-finetune")
    assert "fine-tuning on 84x84 frames needs at least 1.99 GiB" in line
    assert (
        "replay of 100000 frames 1.97 GiB" in line and "expected a smaller replay_capacity" in line
    )
    assert not out.exists()


def test_a_probe_batch_too_big_for_the_machine_is_refused(
    ann_data, tmp_path, small_machine, capsys
):
    result = tmp_path / "probe.json"
    probe = ["--encoder", "random", "--data", str(ann_data), "--out", str(result)]
    assert probe_main([*probe, "--batch-size", "65536"]) == 2
    line = one_line_error(capsys, "semore-probe")
    assert "the probe at --batch-size 65536 on 32x32 frames needs at least" in line
    assert not result.exists()


def test_a_contact_sheet_too_big_for_the_machine_is_refused(
    ann_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(memory, "total_ram_bytes", lambda: 64 << 10)  # smaller than the sheet
    page, png = tmp_path / "page.html", tmp_path / "sheet.png"
    assert inspect_main(["--data", str(ann_data), "--out", str(page), "--png", str(png)]) == 2
    assert "a contact sheet of 12 frames needs at least" in one_line_error(capsys, "semore-inspect")
    assert not page.exists() and not png.exists()


def _run_body(body) -> int:
    return cli.run_cli(cli.make_parser("semore-x", "test", config_overrides=False), [], body, False)


def test_an_allocation_that_fails_anyway_is_one_line(capsys):
    def no_memory(args, overrides):
        raise MemoryError

    def torch_cpu(args, overrides):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 8 bytes.\nmore")  # fmt: skip

    for body in (no_memory, torch_cpu):
        assert _run_body(body) == 2
        assert "semore-x: error: out of memory" in one_line_error(capsys, "semore-x")

    def bug(args, overrides):
        raise RuntimeError("a bug shows its traceback")

    with pytest.raises(RuntimeError, match="a bug"):
        _run_body(bug)


def test_parser_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        collect_main(["--config", "quickstart"])  # --out missing
    assert exit_.value.code == 2
    assert "the following arguments are required: --out" in one_line_error(capsys, "semore-collect")


def test_checks_describe_and_show_values():
    assert show(10**29) == "1e+29" and show(10**400) == "an integer of 1329 bits"
    assert show("x" * 100).endswith("...") and len(show("x" * 100)) == 60
    assert Int(1, 10**6).describe() == "an int in [1, 1e6]"
    assert Float(0.0, 1.0, low_open=True).describe() == "a number in (0, 1]"
    assert Float(0.0).describe() == "a number >= 0"
    assert ListOf(Int(0, 9), 1, unique=True).describe() == (
        "a list of at least 1 distinct values, each an int in [0, 9]"
    )
    for bad in (True, float("nan"), float("inf"), "1", None):
        assert not Float(0.0, 1.0).accepts(bad)
    assert not Int(0, 1).accepts(True) and not Int(0, 1).accepts(1.0)
    with pytest.raises(argparse.ArgumentTypeError, match=r"'1e3' is not an int in \[1, 10\]"):
        cli.int_in(1, 10)("1e3")
