"""The shipped study presets: each loads, composes with the study it starts from (``base:``),
reproduces the committed study made from it, and the ones that compare regimes put every arm
on one learner (issue 17), so their tables never carry the "Not one learner" flag."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.compare.config import STRONGEST, ArmConfig, CompareConfig
from pipeline.compare.continuation import continued
from pipeline.compare.learner import (
    ARM_FIELDS,
    check_learner,
    compare_settings,
    learner_settings,
)
from pipeline.config import flatten, load_config, merge, preset_names, resolve_config, to_dict
from pipeline.errors import SemoreError
from pipeline.finetune.config import FinetuneConfig

MATCHED = ("quick", "matched", "matched_smooth", "matched_ent1", "study_quick", "baselines")


def load(name: str) -> CompareConfig:
    # quick's arms read semore-run's pretrained export, given on its command line.
    return load_config(CompareConfig, name, {"pretrained": "encoder.pt"}, stage="compare")


@pytest.mark.parametrize("name", preset_names("compare"))
def test_every_compare_preset_loads(name):
    cfg = load(name)
    assert cfg.arms and cfg.reference_arm in (*cfg.arms, STRONGEST)


@pytest.mark.parametrize("name", MATCHED)
def test_regime_presets_run_every_arm_on_one_learner(name):
    check = check_learner(load(name))
    assert check.matched, f"{name} arms differ in {check.differing}"


@pytest.mark.parametrize("name", ["matched", "matched_smooth", "matched_ent1"])
def test_the_matched_study_holds_the_five_regimes_on_five_seeds(name):
    cfg = load(name)
    modes = {name: arm.overrides.get("encoder_mode", "finetune") for name, arm in cfg.arms.items()}
    assert modes == {
        "semore_frozen": "frozen",
        "semore_finetune": "finetune",
        "semore_guided": "guided",
        "scratch": "finetune",
        "random_frozen": "frozen",
    }
    assert cfg.arms["scratch"].encoder == "none" and cfg.reference_arm == "scratch"
    # scratch trains the layers finetune and guided train: the arms differ in the weights alone.
    trained = {
        name: cfg.arms[name].overrides["encoder_trainable_from"]
        for name in ("semore_finetune", "semore_guided", "scratch")
    }
    assert set(trained.values()) == {"projection"}
    assert len(cfg.seeds) >= 5 and cfg.num_eval_episodes == 10 and cfg.num_train_steps == 10_000
    assert check_learner(cfg).differing == []


def test_the_learner_check_compares_every_fine_tune_field_but_the_arm_fields():
    """Every field of FinetuneConfig, changed in one arm alone, is flagged unless an arm is
    about it (ARM_FIELDS, which must name fields that exist)."""
    default = to_dict(FinetuneConfig())
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert set(ARM_FIELDS) <= names
    for key, value in flatten(default).items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        changed = copy.deepcopy(default)
        *sections, leaf = key.split(".")
        node = changed
        for section in sections:
            node = node[section]
        node[leaf] = value + 1 if numeric else "changed"
        check = compare_settings({"a": learner_settings(default), "b": learner_settings(changed)})
        expected = set() if key.split(".")[0] in ARM_FIELDS else {key}
        if key in ("update_every", "updates_per_step"):
            expected.add("utd")
        assert set(check.differing) == expected, key
    assert {k.split(".")[0] for k in flatten(default)} == names  # every field was changed


def test_a_study_whose_arms_differ_in_precision_is_not_one_learner():
    cfg = CompareConfig(
        arms={
            "scratch": ArmConfig(overrides={"fabric": {"precision": "32-true"}}),
            "frozen": ArmConfig(overrides={"encoder_mode": "frozen", "encoder_lr": 1e-5}),
        }
    )
    check = check_learner(cfg)
    assert check.differing == ["fabric.precision"] and not check.matched
    assert check.note("scratch") == "fabric.precision 32-true"


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
COMMITTED = sorted(p.parent.name for p in RESULTS.glob("*/study.yaml"))
# Results folders that no preset reproduces, and why. None today: every committed study's
# folder is named after the preset it was made from.
EXEMPT: dict[str, str] = {}
# Report settings added after some studies ran, at the value those reports had (they change
# no run, only which comparisons the report draws).
ADDED_REPORT_FIELDS = {"baseline_arms": [], "also_compare_to": [], "continue_best": None}


def test_every_committed_study_has_its_preset():
    assert len(COMMITTED) >= 13
    assert set(COMMITTED) - set(EXEMPT) <= set(preset_names("compare"))


@pytest.mark.parametrize("name", [n for n in COMMITTED if n not in EXEMPT])
def test_a_committed_study_is_what_its_composed_preset_resolves_to(name):
    """Rerunning a committed study from its preset runs exactly the study its results came
    from (the results folder's study.yaml, every field, as a YAML mapping: key order is not
    part of it, so the 20k continuations list their two arms in their base's order)."""
    kept = yaml.safe_load((RESULTS / name / "study.yaml").read_text())
    # A continuation (continue_best) runs the arms its folder's study.yaml recorded as picked,
    # as a rerun that reports into that folder does.
    resolved = to_dict(
        continued(load_config(CompareConfig, name, stage="compare"), None, RESULTS / name)
    )
    for field_name, default in ADDED_REPORT_FIELDS.items():  # added after the study ran
        if field_name not in kept and resolved.get(field_name) == default:
            del resolved[field_name]
    assert resolved == kept


def test_the_matched_family_writes_the_learner_of_record_once():
    """Only matched_ent1 names the learner; each of the others states how it differs."""
    folder = resolve_config("matched_ent1", "compare").parent
    for name in (
        "matched",
        "matched_smooth",
        "matched_20k",
        "matched_ent1_20k",
        "matched_smooth_20k",
        "tune_learner",
    ):
        own = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert own["base"] in ("matched_ent1", "matched", "matched_smooth"), name
        assert "batch_size" not in own.get("overrides", {}), name
        assert "dataset" not in own and "encoders" not in own, name
    plain, variant = load("matched"), load("matched_ent1")
    assert plain.arms == variant.arms and plain.seeds == variant.seeds
    assert plain.overrides == merge(variant.overrides, {"sac": {"target_entropy_per_dim": -4.0}})


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BASE_STUDY = {
    "overrides": {"batch_size": 128, "sac": {"critic_lr": 1.0e-3, "target_entropy_per_dim": -1.0}},
    "arms": {
        "frozen": {"encoder": "none", "overrides": {"encoder_mode": "frozen"}},
        "scratch": {"encoder": "none", "overrides": {"encoder_lr": 1.0e-3}},
    },
    "seeds": [0, 1, 2],
}


def test_a_study_composes_with_its_base(tmp_path):
    write(tmp_path, "parent", BASE_STUDY)
    child = write(
        tmp_path,
        "child",
        {
            "base": "parent.yaml",
            "overrides": {"sac": {"target_entropy_per_dim": -4.0}, "nstep": 5},
            "arms": {
                "frozen": None,
                "scratch": {"overrides": {"encoder_mode": "finetune"}},
                "guided": {"encoder": "none", "overrides": {"encoder_mode": "guided"}},
            },
            "seeds": [7],
        },
    )
    cfg = load_config(CompareConfig, child, stage="compare")
    # Mappings merge at any depth; a list replaces; a null arm leaves the study.
    assert cfg.overrides == {
        "batch_size": 128,
        "nstep": 5,
        "sac": {"critic_lr": 1.0e-3, "target_entropy_per_dim": -4.0},
    }
    assert list(cfg.arms) == ["scratch", "guided"]
    assert cfg.arms["scratch"].overrides == {"encoder_lr": 1.0e-3, "encoder_mode": "finetune"}
    assert cfg.seeds == [7]
    # A null override goes back to the fine-tune preset's value; a null field to its default.
    grandchild = write(
        tmp_path,
        "grandchild",
        {
            "base": "child",
            "overrides": {"sac": None},
            "seeds": None,
            "reference_arm": "guided",
        },
    )
    cfg = load_config(CompareConfig, grandchild, stage="compare")
    assert cfg.overrides == {"batch_size": 128, "nstep": 5} and cfg.seeds == [0, 1, 2, 3, 4]
    # Command-line overrides apply after the composition.
    cfg = load_config(CompareConfig, grandchild, ["--seeds", "[9]"], stage="compare")
    assert cfg.seeds == [9] and list(cfg.arms) == ["scratch", "guided"]


def test_a_base_that_goes_round_or_is_missing_is_a_one_line_error(tmp_path):
    write(tmp_path, "a", {**BASE_STUDY, "base": "b"})
    write(tmp_path, "b", {"base": "a.yaml"})
    with pytest.raises(SemoreError, match=r"base goes round in a circle \(a -> b -> a\)"):
        load_config(CompareConfig, tmp_path / "a.yaml", stage="compare")
    write(tmp_path, "c", {**BASE_STUDY, "base": "nowhere"})
    with pytest.raises(
        SemoreError,
        match="config file nowhere not found: expected a YAML file or one of the compare presets",
    ):
        load_config(CompareConfig, tmp_path / "c.yaml", stage="compare")
    write(tmp_path, "d", {**BASE_STUDY, "base": 3})
    with pytest.raises(SemoreError, match="base is 3: expected a preset name or a YAML path"):
        load_config(CompareConfig, tmp_path / "d.yaml", stage="compare")


def test_the_baselines_study_runs_every_baseline_on_the_learner_of_record():
    """issue 29's study: matched_ent1's learner, its arms as stated, the strongest baseline."""
    cfg, record = load("baselines"), load("matched_ent1")
    assert cfg.overrides == record.overrides and cfg.seeds == record.seeds == [0, 1, 2, 3, 4]
    assert (cfg.num_train_steps, cfg.num_eval_episodes) == (10_000, 10)
    assert set(cfg.arms) == {"semore_frozen", "semore_guided", "scratch", "random_frozen",
                             "drqv2", "atc_frozen", "atc_guided", "nolang_guided"}  # fmt: skip
    assert cfg.arms["scratch"].overrides["encoder_trainable_from"] == "trunk"  # from the pixels
    assert cfg.arms["scratch"].architecture_from == "encoders.semore"
    assert cfg.arms["drqv2"].overrides["encoder"] == {"kind": "drqv2"}
    assert cfg.reference_arm == STRONGEST and cfg.also_compare_to == ["drqv2"]
    assert "semore_guided" not in cfg.baseline_arms and "drqv2" in cfg.baseline_arms
