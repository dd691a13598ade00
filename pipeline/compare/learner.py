"""Is every arm of a study on the same learner? Each arm's fine-tune settings are resolved as
its runs resolve them (the study's fine-tune preset or YAML, the study's overrides, the arm's
own, the study's budget and evaluation), and the settings that decide how the heads learn and
how a run is scored are compared across arms. Arms are meant to differ only in what they are
about: where the encoder comes from and what RL may do to it."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.compare.config import CompareConfig
from pipeline.config import flatten, load_config, merge, to_dict
from pipeline.finetune.config import FinetuneConfig

# Top-level fine-tune fields and sections that make the learner and its evaluation (every key
# under a section counts): batch, update-to-data ratio, n-step, replay, the SAC heads (rates,
# discount, targets, temperature, augmentation, auxiliary weights), the task and evaluation.
LEARNER_FIELDS = (
    "batch_size", "update_every", "updates_per_step", "nstep", "num_seed_steps",
    "replay_capacity", "action_repeat", "frame_stack", "num_train_steps", "eval_every_steps",
    "num_eval_episodes", "eval_seed", "eval", "sac", "env",
)  # fmt: skip
# What an arm is about, though it sits in the sections above: the encoder's own rate.
ARM_FIELDS = ("sac.encoder_lr",)


def arm_settings(cfg: CompareConfig) -> dict[str, dict[str, object]]:
    """Per arm, its resolved learner settings as dotted keys (``sac.critic_lr``), plus the
    update-to-data ratio ``utd`` (gradient updates per agent step)."""
    budget = {"num_train_steps": cfg.num_train_steps, "eval_every_steps": cfg.eval_every_steps,
              "num_eval_episodes": cfg.num_eval_episodes}  # fmt: skip
    out = {}
    for name, arm in cfg.arms.items():
        overrides = merge(merge(cfg.overrides, arm.overrides), budget)
        resolved = flatten(
            to_dict(load_config(FinetuneConfig, cfg.finetune, overrides, "finetune"))
        )
        kept = {key: value for key, value in resolved.items()
                if key.split(".")[0] in LEARNER_FIELDS and key not in ARM_FIELDS}  # fmt: skip
        kept["utd"] = resolved["updates_per_step"] / resolved["update_every"]
        out[name] = kept
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
        return ", ".join(f"{k} {self.values[arm][k]:g}" if isinstance(self.values[arm][k], float)
                         else f"{k} {self.values[arm][k]}" for k in self.differing)  # fmt: skip


def check_learner(cfg: CompareConfig) -> LearnerCheck:
    """Compare the arms' resolved learner settings."""
    settings = arm_settings(cfg)
    keys = sorted({key for values in settings.values() for key in values})
    differing = [k for k in keys if len({repr(v.get(k)) for v in settings.values()}) > 1]
    values = {arm: {k: v.get(k) for k in differing} for arm, v in settings.items()}
    return LearnerCheck(differing, [k for k in differing if k in cfg.unmatched_ok], values)
