"""Typed config of ``semore-compare``: which arms, on which seeds, for how long."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import resumable
from pipeline.launch.config import LauncherConfig
from semore.checks import MAX_PROCESSES, MAX_SEED, MAX_STEPS, Int, ListOf, check_fields

# An arm's encoder "encoders.NAME" is the study's own pretrained encoder NAME.
ENCODER_REF = "encoders."


@dataclass
class DatasetConfig:
    """The study's dataset, collected and annotated into OUT/data by the stages' own commands."""

    collect: str = "quickstart"  # collect preset or YAML
    collect_overrides: dict = field(default_factory=dict)
    annotate: str = "quickstart"  # annotate preset or YAML
    annotate_overrides: dict = field(default_factory=dict)


@dataclass
class StudyEncoderConfig:
    """One encoder pretrained on the study's dataset into OUT/encoders/NAME (ablations differ
    only in their overrides, so they all see the same data and budget)."""

    config: str = "quickstart"  # pretrain preset or YAML
    overrides: dict = field(default_factory=dict)


@dataclass
class ArmConfig:
    """One arm: where its encoder comes from and what it overrides in the fine-tune config."""

    # "encoders.NAME" (an encoder the study pretrains), "pretrained" (the study's
    # `pretrained` export), an export (RUN/encoder.pt, relative to
    # the folder semore-compare runs in), or "none" for an encoder built fresh from the
    # fine-tune config (from scratch, or with encoder_mode frozen the frozen random control).
    encoder: str = "none"
    # Nested fine-tune config overrides, e.g. {encoder_mode: frozen}.
    overrides: dict = field(default_factory=dict)
    # For "none": copy the architecture of this encoder (same forms as `encoder`), so a
    # from-scratch or random arm has exactly the pretrained arms' encoder.
    architecture_from: str | None = None


# reference_arm's value that picks the best baseline arm when the report is made.
STRONGEST = "strongest"


@dataclass
class ContinueConfig:
    """A longer budget for two arms of a shorter study in the same ``--out``: its best method arm
    and its strongest baseline, picked on the IQM at the shorter budget, go on from their
    checkpoints there (from step 0 where a checkpoint is gone); the other arms stop
    (``pipeline.compare.continuation``)."""

    # The shorter study's budget: every run must have reached it, and the picks are its IQMs.
    from_step: int = 10_000
    # What was picked (arm -> IQM at from_step), written by semore-compare into the results
    # folder's study.yaml so that a rebuilt or carried report keeps the same arms; leave empty.
    picked: dict[str, float] = field(default_factory=dict)
    # The shorter study's results folder (its --report): the pick reads the runs it keeps when
    # --out no longer holds them, as on a fresh checkout where the run folders are gone. None:
    # the runs in --out only.
    from_results: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, from_step=Int(1, MAX_STEPS))


@dataclass
class CompareConfig:
    """A study: every arm runs on every seed with the same fine-tune config and budget."""

    # Built first when given: the dataset, then every encoder pretrained on it.
    dataset: DatasetConfig | None = None
    encoders: dict[str, StudyEncoderConfig] = field(default_factory=dict)
    # An export that arms name as "pretrained" (semore-run passes its own pretrained encoder).
    pretrained: str | None = None
    # The fine-tune preset (or YAML) every arm starts from.
    finetune: str = "quickstart"
    # Overrides for every arm (an arm's own overrides win).
    overrides: dict = field(default_factory=dict)
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    # 5 seeds, the studies of record's protocol (README, Results): the IQM, a 25% trimmed
    # mean, drops int(0.25 * n) runs at each end, so it trims nothing below 4 runs and one run
    # per end from 4 to 7, and 5 is the fewest runs it trims; more seeds narrow the intervals.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    num_train_steps: int = 10_000
    # 10 points per curve at the default budget.
    eval_every_steps: int = 1_000
    # DrQ / DBC report means over 10 evaluation episodes (fixed seeds, disjoint from training).
    num_eval_episodes: int = 10
    # Steps at which the table reports IQMs (default: a quarter, half and all of the budget).
    report_steps: list[int] = field(default_factory=list)
    # The arm whose final IQM the others must reach (the from-scratch baseline), or "strongest":
    # the baseline arm with the highest IQM at the last report step, chosen when the report is
    # made, so a claim is always made against the best baseline the study ran.
    reference_arm: str = "scratch"
    # The baselines (arms that are not the method): the candidates for "strongest", and the
    # arms that get no verdict sentence of their own when given. Empty: every arm is compared.
    baseline_arms: list[str] = field(default_factory=list)
    # Arms every other arm is also compared against (a probability-of-improvement table and a
    # sentence each), e.g. drqv2: what a user would run instead, whether or not it is strongest.
    also_compare_to: list[str] = field(default_factory=list)
    # Runs at a time on this machine; each gets an equal share of the cores.
    jobs: int = resumable(default=2)
    # --launcher slurm's resources per task (each encoder, each run, the report).
    launcher: LauncherConfig = resumable(default_factory=LauncherConfig)
    # Bootstrap resamples per interval: rliable's default (50,000) for reported results; quick
    # presets use fewer, since the percentile ends move by ~0.01 at 2,000 on a handful of runs.
    bootstrap_reps: int = resumable(default=50_000)
    # Set in a continuation preset (a *_20k study): only the best method arm and the strongest
    # baseline of the shorter study go on, so the budget is spent where the question is left.
    continue_best: ContinueConfig | None = None
    # Learner settings (dotted fine-tune keys, e.g. batch_size, sac.critic_lr) in which arms may
    # differ on purpose; say why next to the list in the study YAML. Any other difference in
    # batch, update-to-data ratio, n-step, head settings or evaluation is flagged in table.md.
    unmatched_ok: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("arms is empty: expected at least one arm")
        if self.reference_arm == STRONGEST and not self.baseline_arms:
            raise ValueError(
                "reference_arm 'strongest' with no baseline_arms: expected the baselines listed"
            )
        if self.reference_arm != STRONGEST and self.reference_arm not in self.arms:
            raise ValueError(
                f"reference_arm {self.reference_arm!r} is not an arm: expected one of "
                f"{', '.join(self.arms)} or {STRONGEST!r}"
            )
        for key in ("baseline_arms", "also_compare_to"):
            unknown = [arm for arm in getattr(self, key) if arm not in self.arms]
            if unknown:
                raise ValueError(
                    f"{key} {unknown} are not arms: expected among {', '.join(self.arms)}"
                )
        if self.continue_best is not None:
            self._check_continuation(self.continue_best)
        if self.encoders and self.dataset is None:
            raise ValueError("encoders need a dataset to pretrain on: expected a dataset section")
        for name, arm in self.arms.items():
            if "pretrained" in (arm.encoder, arm.architecture_from) and self.pretrained is None:
                raise ValueError(f"arm {name} uses 'pretrained': expected --pretrained PATH")
            for ref in (arm.encoder, arm.architecture_from or ""):
                if ref.startswith(ENCODER_REF) and ref[len(ENCODER_REF) :] not in self.encoders:
                    raise ValueError(
                        f"arm {name}: {ref} is not a study encoder: expected one of "
                        f"{', '.join(ENCODER_REF + e for e in self.encoders) or 'none defined'}"
                    )
        steps = Int(1, MAX_STEPS)
        check_fields(
            self,
            seeds=ListOf(Int(0, MAX_SEED), 1, unique=True),
            num_train_steps=steps,
            eval_every_steps=steps,
            num_eval_episodes=Int(1, 10**5),
            report_steps=ListOf(Int(0, MAX_STEPS)),
            jobs=Int(1, MAX_PROCESSES),
            # rliable's 50,000 takes seconds; 10**8 would take hours and gigabytes.
            bootstrap_reps=Int(1, 10**7),
        )

    def _check_continuation(self, cont: ContinueConfig) -> None:
        if not self.baseline_arms or len(self.baseline_arms) == len(self.arms):
            raise ValueError(
                "continue_best picks the best method arm and the strongest baseline: expected "
                "baseline_arms listed, and at least one arm that is not a baseline"
            )
        if cont.from_step >= self.num_train_steps:
            raise ValueError(
                f"continue_best.from_step is {cont.from_step}: expected a step of the shorter "
                f"study, from 1 to below num_train_steps ({self.num_train_steps})"
            )
        unknown = [arm for arm in cont.picked if arm not in self.arms]
        if unknown:
            raise ValueError(
                f"continue_best.picked {unknown} are not arms: expected among "
                f"{', '.join(self.arms)} (the pick semore-compare records; leave it empty)"
            )

    def steps_to_report(self) -> list[int]:
        if self.report_steps:
            return sorted(self.report_steps)
        n = self.num_train_steps
        return sorted({n // 4, n // 2, n})
