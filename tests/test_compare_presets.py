"""The shipped study presets: each loads, and the ones that compare regimes put every arm on
one learner (issue 17), so their tables never carry the "Not one learner" flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.compare.config import CompareConfig
from pipeline.compare.learner import arm_settings, check_learner
from pipeline.config import load_config, preset_names

MATCHED = ("quick", "matched", "matched_smooth", "matched_ent1", "study_quick")


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


@pytest.mark.parametrize("name", ["matched", "matched_smooth", "matched_ent1"])
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


# Each variant of the matched study changes one learner setting in every arm, nothing else.
VARIANTS = [("matched_smooth", "sac.action_smoothness_weight", 0.0, 5.0),
            ("matched_ent1", "sac.target_entropy_per_dim", -4.0, -1.0)]  # fmt: skip


@pytest.mark.parametrize(("name", "key", "plain_value", "variant_value"), VARIANTS)
def test_a_matched_variant_differs_from_matched_in_one_setting_alone(
    name, key, plain_value, variant_value
):
    plain, variant = arm_settings(load("matched")), arm_settings(load(name))
    assert plain.keys() == variant.keys()
    for arm in plain:
        assert {k for k in plain[arm] if plain[arm][k] != variant[arm][k]} == {key}
        assert (plain[arm][key], variant[arm][key]) == (plain_value, variant_value)
    assert load("matched").arms == load(name).arms


STUDIES = Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "compare"
# A 20k continuation reads its 10k preset's runs from the same --out: same arms, same learner.
CONTINUATIONS = [("matched_20k", "matched"), ("matched_smooth_20k", "matched_smooth"),
                 ("matched_ent1_20k", "matched_ent1")]  # fmt: skip


@pytest.mark.parametrize("name", sorted(p.stem for p in STUDIES.glob("*.yaml")))
def test_every_committed_study_config_loads(name):
    cfg = load_config(CompareConfig, STUDIES / f"{name}.yaml", stage="compare")
    assert cfg.arms and cfg.reference_arm in cfg.arms


@pytest.mark.parametrize(("study", "preset"), CONTINUATIONS)
def test_a_20k_continuation_runs_its_presets_arms_unchanged(study, preset):
    longer, shorter = load_config(CompareConfig, STUDIES / f"{study}.yaml"), load(preset)
    assert longer.num_train_steps == 20_000 and shorter.num_train_steps == 10_000
    assert longer.arms.keys() <= shorter.arms.keys()
    assert all(longer.arms[a] == shorter.arms[a] for a in longer.arms)
    assert longer.overrides == shorter.overrides and longer.seeds == shorter.seeds
