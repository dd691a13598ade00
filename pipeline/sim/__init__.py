"""Simulator backends behind one interface (:class:`pipeline.sim.base.DrivingEnv`)."""

from __future__ import annotations

from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv, RewardConfig
from pipeline.sim.configs import BACKENDS, CarlaConfig, HighwayConfig


def make_env(
    backend: str,
    reward: RewardConfig,
    highway: HighwayConfig | None = None,
    carla: CarlaConfig | None = None,
    worker: int = 0,
) -> DrivingEnv:
    """Build a backend; CARLA worker ``worker`` uses ``carla.hosts[worker % len(hosts)]``."""
    if backend == "highway":
        from pipeline.sim.highway import HighwayEnv

        return HighwayEnv(highway or HighwayConfig(), reward)
    if backend == "carla":
        from pipeline.sim.carla_env import CarlaEnv

        carla = carla or CarlaConfig()
        return CarlaEnv(carla, reward, host=carla.hosts[worker % len(carla.hosts)])
    raise SemoreError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
