"""Typed configs of the simulator backends and the data-collection policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.sim.base import RewardConfig

BACKENDS = ("highway", "carla")
POLICIES = ("expert", "random", "mixed")


@dataclass
class HighwayConfig:
    """The embedded highway-env simulator (no server, offline)."""

    # 84x84 is the DrQ/DBC observation size; any H x W works.
    image_height: int = 84
    image_width: int = 84
    # Three lanes give the expert lane changes to make and the captions neighbours to name.
    lanes_count: int = 3
    # Dense enough that a lead vehicle is usually in view, sparse enough to overtake.
    vehicles_count: int = 20
    vehicles_density: float = 1.0
    # highway-env integrates at 15 Hz and acts at 5 Hz by default; 5 Hz keeps an 84x84
    # frame's content changing visibly between steps (the motion stream needs that).
    simulation_frequency_hz: int = 15
    policy_frequency_hz: int = 5
    # 200 steps = 40 s of driving at 5 Hz: long enough for several overtakes.
    max_episode_steps: int = 200
    # Pixels per metre of the ego-centred render: 84 px then show ~28 m around the ego.
    render_scaling: float = 3.0
    # Where the ego sits across the render (0 = left edge, driving to the right): 0.3, as in
    # highway-env, shows more road ahead (where the lead vehicle is) than behind.
    render_ego_x_fraction: float = 0.3
    # highway-env reports no impulse; a crash counts as this many N*s, so with the DBC
    # coefficient 1e-4 a collision costs 10 reward (~10 m of progress).
    collision_impulse: float = 1e5
    # The expert's target speed: a typical highway cruising speed for the IDM.
    target_speed_mps: float = 30.0

    def __post_init__(self) -> None:
        for name in ("image_height", "image_width", "lanes_count", "max_episode_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"highway.{name} is {getattr(self, name)}: expected >= 1")
        if not 0.0 <= self.render_ego_x_fraction <= 1.0:
            raise ValueError(
                f"highway.render_ego_x_fraction is {self.render_ego_x_fraction}: expected in [0, 1]"
            )
        if self.simulation_frequency_hz % self.policy_frequency_hz:
            raise ValueError(
                "highway.simulation_frequency_hz must be a multiple of policy_frequency_hz"
            )


@dataclass
class CarlaConfig:
    """The CARLA backend (a running server is required). Defaults: the DBC Town04 highway."""

    # One collection worker per address; start one server per address yourself, or give
    # `server_cmd` (with {port} in it) to have each worker start its own.
    hosts: list[str] = field(default_factory=lambda: ["localhost:2000"])
    # CARLA's own client default is 5 s; loading Town04 on a cold server takes longer.
    timeout_s: float = 20.0
    town: str = "Town04"
    # 20 Hz synchronous mode as in DBC: physics is deterministic for a fixed delta.
    fixed_delta_s: float = 0.05
    # Traffic Manager port offset from the server port (2000 -> 8000).
    tm_port_offset: int = 6000
    ego_blueprint: str = "vehicle.audi.a2"
    num_vehicles: int = 20
    # Five 60-degree cameras make DBC's 300-degree panorama (84 x 5*84 = 84x420).
    camera_yaws_deg: list[float] = field(default_factory=lambda: [-120.0, -60.0, 0.0, 60.0, 120.0])
    camera_fov_deg: float = 60.0
    image_height: int = 84
    image_width: int = 84
    # DBC episodes are 1000 ticks (50 s at 20 Hz).
    max_episode_steps: int = 1000
    # Reconnect and re-run the in-flight episode this many times before giving up.
    max_retries: int = 3
    server_cmd: str | None = None
    # Seconds to wait for a started server before connecting.
    server_start_wait_s: float = 20.0

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("carla.hosts is empty: expected at least one host:port")
        for host in self.hosts:
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"carla.hosts entry {host!r} is invalid: expected HOST:PORT")
        if self.timeout_s <= 0 or self.fixed_delta_s <= 0:
            raise ValueError("carla.timeout_s and carla.fixed_delta_s must be > 0")


@dataclass
class PolicyConfig:
    """Which controller produces the recorded actions."""

    name: Literal["expert", "random", "mixed"] = "expert"
    # For `mixed`: chance of the expert; 0.8 keeps most data on-road while still covering
    # off-expert states and actions that the reward head must learn about.
    expert_prob: float = 0.8
    # `episode`: draw expert/random once per episode; `step`: per step.
    mixed_mode: Literal["episode", "step"] = "episode"

    def __post_init__(self) -> None:
        if not 0.0 <= self.expert_prob <= 1.0:
            raise ValueError(f"policy.expert_prob is {self.expert_prob}: expected in [0, 1]")
