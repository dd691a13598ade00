"""The shipped study presets: each loads, and the ones that compare regimes put every arm on
one learner (issue 17), so their tables never carry the "Not one learner" flag."""

from __future__ import annotations

import pytest

from pipeline.compare.config import CompareConfig
from pipeline.compare.learner import arm_settings, check_learner
from pipeline.config import load_config, preset_names

MATCHED = ("quick", "matched", "matched_smooth", "study_quick")


def load(name: str) -> CompareConfig:
    # quick's arms read semore-run's pretrained export, given on its command line.
    return load_config(CompareConfig, name, {"pretrained": "encoder.pt"}, stage="compare")


@pytest.mark.parametrize("name", preset_names("compare"))
def test_every_compare_preset_loads(name):
    cfg = load(name)
    assert cfg.arms and cfg.reference_arm in cfg.arms


@pytest.mark.parametrize("name", MATCHED)
def test_regime_presets_run_every_arm_on_one_learner(name):
    check = check_learner(load(name))
    assert check.matched, f"{name} arms differ in {check.differing}"


@pytest.mark.parametrize("name", ["matched", "matched_smooth"])
def test_the_matched_study_holds_the_five_regimes_on_five_seeds(name):
    cfg = load(name)
    modes = {name: arm.overrides.get("encoder_mode", "finetune") for name, arm in cfg.arms.items()}
    assert modes == {"semore_frozen": "frozen", "semore_finetune": "finetune",
                     "semore_guided": "guided", "scratch": "finetune",
                     "random_frozen": "frozen"}  # fmt: skip
    assert cfg.arms["scratch"].encoder == "none" and cfg.reference_arm == "scratch"
    # scratch trains the layers finetune and guided train: the arms differ in the weights alone.
    trained = {name: cfg.arms[name].overrides["encoder_trainable_from"]
               for name in ("semore_finetune", "semore_guided", "scratch")}  # fmt: skip
    assert set(trained.values()) == {"projection"}
    assert len(cfg.seeds) >= 5 and cfg.num_eval_episodes == 10 and cfg.num_train_steps == 10_000
    assert check_learner(cfg).differing == []


def test_matched_smooth_differs_from_matched_in_the_smoothness_term_alone():
    plain, smooth = arm_settings(load("matched")), arm_settings(load("matched_smooth"))
    assert plain.keys() == smooth.keys()
    key = "sac.action_smoothness_weight"
    for arm in plain:
        assert {k for k in plain[arm] if plain[arm][k] != smooth[arm][k]} == {key}
        assert (plain[arm][key], smooth[arm][key]) == (0.0, 5.0)
    assert load("matched").arms == load("matched_smooth").arms
