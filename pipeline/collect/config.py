"""Typed config of stage 1 (``semore-collect``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import content_dict, resumable
from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.launch.config import LauncherConfig
from pipeline.sim.configs import EnvConfig, PolicyConfig
from semore.checks import MAX_PROCESSES, MAX_SEED, Int, check_fields

# A dataset holds at most as many episodes as the sample key's 6-digit field numbers.
EPISODES = Int(1, schema.MAX_EPISODES)
# A shard is rewritten whole when one of its episodes is missing; past ~1000 episodes a
# shard stops being a unit of resumption or of parallel work.
MAX_EPISODES_PER_SHARD = 1000


@dataclass
class CollectConfig(EnvConfig):
    """Everything that determines a raw dataset (plus how many processes make it).

    The simulator fields (``backend``, ``highway``, ``carla``, ``reward``) are those of
    :class:`~pipeline.sim.configs.EnvConfig`, at the top level of the collect YAML.
    """

    # First field of every sample key; names the dataset's run.
    run: str = "hw"
    # Total episodes wanted in the dataset; a rerun with more extends it.
    episodes: int = resumable(default=8)
    # Shards are the unit of resumption and of parallel work; 4 short episodes is ~800
    # samples, a few MB, so a killed run loses little and workers stay balanced.
    episodes_per_shard: int = 4
    seed: int = 0
    # Simulator processes on this machine (one simulator each).
    workers: int = resumable(default=1)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # --launcher slurm's resources per task (one task per --num-workers slice).
    launcher: LauncherConfig = resumable(default_factory=LauncherConfig)

    def __post_init__(self) -> None:
        schema.check_run_name(self.run)
        check_fields(
            self,
            episodes=EPISODES,
            episodes_per_shard=Int(1, MAX_EPISODES_PER_SHARD),
            seed=Int(0, MAX_SEED),
            workers=Int(1, MAX_PROCESSES),
        )

    @property
    def env(self) -> EnvConfig:
        """The simulator part of this config."""
        return EnvConfig(self.backend, self.highway, self.carla, self.reward)


def content_hash(cfg: CollectConfig) -> str:
    """Hash of the fields that decide what episodes contain (not how they are scheduled)."""
    return mf.config_hash(content_dict(cfg))
