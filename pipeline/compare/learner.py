"""Is every arm of a study on the same learner? Each arm's fine-tune settings are resolved as
its runs resolve them (the study's fine-tune preset or YAML, the study's overrides, the arm's
own, the study's budget and evaluation), and every setting is compared across arms except
what an arm is about: where the encoder comes from and what RL may do to it.

The learner is everything else (batch, update-to-data ratio, n-step, replay, the SAC heads,
the task, the evaluation, precision), so a fine-tune field added later is compared from the
start; an arm field is one listed in ``ARM_FIELDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.compare.config import CompareConfig
from pipeline.config import flatten, load_config, merge, to_dict
from pipeline.finetune.config import FinetuneConfig

# What an arm is about, not how the learner learns: the encoder's regime (and its warm-up),
# which of its layers train and at which rate, the guided regime's terms, and the
# architecture a fresh encoder is built with (an export brings its own). Every key under a
# section listed here is an arm's.
ARM_FIELDS = (
    "encoder_mode",
    "warmup_updates",
    "encoder_trainable_from",
    "encoder_lr",
    "guide",
    "encoder",
)
# The update-to-data ratio (gradient updates per agent step), compared as one number: batch
# 256 every 2 steps and 128 every step are different learners, the same ratio.
UTD = "utd"


def is_learner_key(dotted: str) -> bool:
    """Whether a dotted fine-tune key (``sac.critic_lr``) is a learner setting."""
    return dotted.split(".")[0] not in ARM_FIELDS


def learner_settings(resolved: dict) -> dict[str, object]:
    """A resolved fine-tune config (its dict form) as its learner settings, dotted keys."""
    flat = flatten(resolved)
    kept = {key: value for key, value in flat.items() if is_learner_key(key)}
    kept[UTD] = flat["updates_per_step"] / flat["update_every"]
    return kept


def arm_settings(cfg: CompareConfig) -> dict[str, dict[str, object]]:
    """Per arm, its resolved learner settings (:func:`learner_settings`)."""
    budget = {
        "num_train_steps": cfg.num_train_steps,
        "eval_every_steps": cfg.eval_every_steps,
        "num_eval_episodes": cfg.num_eval_episodes,
    }
    out = {}
    for name, arm in cfg.arms.items():
        overrides = merge(merge(cfg.overrides, arm.overrides), budget)
        resolved = load_config(FinetuneConfig, cfg.finetune, overrides, "finetune")
        out[name] = learner_settings(to_dict(resolved))
    return out


@dataclass
class LearnerCheck:
    """Which learner settings differ between arms, and each arm's values of them."""

    differing: list[str]  # dotted keys whose values are not the same in every arm
    on_purpose: list[str]  # those of them the study lists in ``unmatched_ok``
    values: dict[str, dict[str, object]]  # arm -> key -> value, for the differing keys

    @property
    def matched(self) -> bool:
        return not [k for k in self.differing if k not in self.on_purpose]

    def note(self, arm: str) -> str:
        """``batch_size 128, utd 2`` for the differing settings of ``arm`` ("" when none)."""
        return ", ".join(
            f"{k} {self.values[arm][k]:g}"
            if isinstance(self.values[arm][k], float)
            else f"{k} {self.values[arm][k]}"
            for k in self.differing
        )


def compare_settings(
    settings: dict[str, dict[str, object]], unmatched_ok: list[str] = ()
) -> LearnerCheck:
    """Compare per-arm learner settings: a key one arm lacks counts as a difference."""
    keys = sorted({key for values in settings.values() for key in values})
    differing = [k for k in keys if len({repr(v.get(k)) for v in settings.values()}) > 1]
    values = {arm: {k: v.get(k) for k in differing} for arm, v in settings.items()}
    return LearnerCheck(differing, [k for k in differing if k in unmatched_ok], values)


def check_learner(cfg: CompareConfig) -> LearnerCheck:
    """Compare the arms' resolved learner settings."""
    return compare_settings(arm_settings(cfg), cfg.unmatched_ok)
