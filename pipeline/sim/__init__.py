"""Simulator backends behind one interface (:class:`pipeline.sim.base.DrivingEnv`).

Everything backend-specific lives in this package: ``configs`` (typed settings and the shared
``EnvConfig``), ``spec`` (what stages need to know about a backend), ``highway`` / ``expert``
(the embedded highway-env task and its expert), ``carla_*`` (the CARLA client, its server
process and its state read-out), ``policies`` (collection policies) and ``gym`` (the task as a
gymnasium environment).
"""

from __future__ import annotations

from pipeline.errors import SemoreError
from pipeline.sim.base import DrivingEnv, RewardConfig
from pipeline.sim.configs import BACKENDS, CarlaConfig, EnvConfig, HighwayConfig
from pipeline.sim.spec import BackendSpec, backend_spec

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "CarlaConfig",
    "DrivingEnv",
    "EnvConfig",
    "HighwayConfig",
    "RewardConfig",
    "backend_spec",
    "make_env",
]


def make_env(env: EnvConfig, worker: int = 0) -> DrivingEnv:
    """Build ``env``'s backend; CARLA worker ``worker`` uses ``carla.hosts[worker % len(hosts)]``."""
    if env.backend == "highway":
        from pipeline.sim.highway import HighwayEnv

        return HighwayEnv(env.highway, env.reward)
    if env.backend == "carla":
        from pipeline.sim.carla_env import CarlaEnv

        hosts = env.carla.hosts
        return CarlaEnv(env.carla, env.reward, host=hosts[worker % len(hosts)])
    raise SemoreError(f"unknown backend {env.backend!r}: expected one of {', '.join(BACKENDS)}")
