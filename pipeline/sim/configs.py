"""Typed configs of the simulator backends and the data-collection policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import resumable
from pipeline.data import schema
from pipeline.sim.base import RewardConfig
from semore.checks import Float, Int, ListOf, Opt, check_fields

BACKENDS = ("highway", "carla")
# Ranges of the simulator settings: what the sample key and the renderers can hold, and far
# above any traffic scene in use.
IMAGE_SIZE = Int(1, schema.MAX_IMAGE_SIZE)
EPISODE_STEPS = Int(1, schema.MAX_EPISODE_STEPS)
MAX_LANES = 16
MAX_VEHICLES = 1000
MAX_HZ = 1000
MAX_CAMERAS = 16


@dataclass
class HighwayConfig:
    """The embedded highway-env simulator (no server, offline)."""

    # 84x84 is the DrQ/DBC observation size; any H x W works.
    image_height: int = 84
    image_width: int = 84
    # Three lanes give the expert lane changes to make and the captions neighbours to name.
    lanes_count: int = 3
    # Dense enough that a lead vehicle is usually near, sparse enough to overtake.
    vehicles_count: int = 20
    vehicles_density: float = 1.0
    # highway-env integrates at 15 Hz and acts at 5 Hz by default; 5 Hz keeps an 84x84
    # frame's content changing visibly between steps (the motion stream needs that).
    simulation_frequency_hz: int = 15
    policy_frequency_hz: int = 5
    # 200 steps = 40 s of driving at 5 Hz: long enough for several overtakes.
    max_episode_steps: int = 200
    # Pixels per metre of the ego-centred render: 84 px then show ~56 m, ~39 m of it ahead,
    # so the lead vehicle (the expert follows at 35-45 m) is usually in view.
    render_scaling: float = 1.5
    # Where the ego sits across the render (0 = left edge, driving to the right): 0.3, as in
    # highway-env, shows more road ahead (where the lead vehicle is) than behind.
    render_ego_x_fraction: float = 0.3
    # highway-env reports no impulse; a crash counts as this many N*s, so with the DBC
    # coefficient 1e-4 a collision costs 10 reward (~10 m of progress).
    collision_impulse: float = 1e5
    # The expert's target speed: a typical highway cruising speed for the IDM.
    target_speed_mps: float = 30.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            image_height=IMAGE_SIZE,
            image_width=IMAGE_SIZE,
            lanes_count=Int(1, MAX_LANES),
            vehicles_count=Int(0, MAX_VEHICLES),
            vehicles_density=Float(0.0, 100.0),
            simulation_frequency_hz=Int(1, MAX_HZ),
            policy_frequency_hz=Int(1, MAX_HZ),
            max_episode_steps=EPISODE_STEPS,
            render_scaling=Float(0.0, 100.0, low_open=True),
            render_ego_x_fraction=Float(0.0, 1.0),
            collision_impulse=Float(0.0, 1e12),
            target_speed_mps=Float(0.0, 200.0, low_open=True),
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
    hosts: list[str] = resumable(default_factory=lambda: ["localhost:2000"])
    # CARLA's own client default is 5 s; loading Town04 on a cold server takes longer.
    timeout_s: float = resumable(default=20.0)
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
    max_retries: int = resumable(default=3)
    server_cmd: str | None = resumable(default=None)
    # Seconds to keep retrying the connection to a server started by `server_cmd`
    # (CarlaUE4 takes 10-20 s to open its RPC port).
    server_start_wait_s: float = resumable(default=20.0)
    # DBC's highway stretch of Town04: OpenDRIVE road 45, its four lanes (-1 = leftmost in
    # the driving direction), ego 100 m into the road and traffic 100-300 m in, so every
    # episode starts on the highway. None = the map's own spawn points (any town).
    spawn_road_id: int | None = 45
    spawn_lane_ids: list[int] = field(default_factory=lambda: [-1, -2, -3, -4])
    ego_spawn_s_m: float = 100.0
    vehicles_spawn_s_range_m: list[float] = field(default_factory=lambda: [100.0, 300.0])
    # Traffic spawns on a grid of slots this far apart along the road: a car is ~4.5 m long,
    # so 10 m slots never overlap (an overlapping spawn fails in CARLA).
    vehicles_spawn_gap_m: float = 10.0
    # DBC runs the autopilot 30% below the speed limit (the TM default is also 30%).
    tm_speed_difference_pct: float = 30.0
    # DBC's camera mount: 1.6 m ahead of the vehicle origin, 1.7 m up (x, y, z in metres).
    camera_location_m: list[float] = field(default_factory=lambda: [1.6, 0.0, 1.7])
    # Ticks after spawning before the first observation: vehicles spawned slightly above
    # the road settle and the autopilot traffic starts moving.
    reset_warmup_ticks: int = 10
    # DBC ends an episode after 20 consecutive ticks in collision (the ego is stuck); a
    # single contact is only penalised by the reward. 0 = never terminate on collisions.
    collision_terminate_ticks: int = 20

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("carla.hosts is empty: expected at least one host:port")
        for host in self.hosts:
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"carla.hosts entry {host!r} is invalid: expected HOST:PORT")
        metres = Float(-1e5, 1e5)
        check_fields(
            self,
            timeout_s=Float(0.0, 3600.0, low_open=True),
            fixed_delta_s=Float(0.0, 1.0, low_open=True),
            tm_port_offset=Int(-65535, 65535),
            num_vehicles=Int(0, MAX_VEHICLES),
            camera_yaws_deg=ListOf(Float(-360.0, 360.0), 1, MAX_CAMERAS),
            camera_fov_deg=Float(0.0, 180.0, low_open=True),
            image_height=IMAGE_SIZE,
            image_width=IMAGE_SIZE,
            max_episode_steps=EPISODE_STEPS,
            max_retries=Int(0, 1000),
            server_start_wait_s=Float(0.0, 3600.0),
            spawn_road_id=Opt(Int(-(10**9), 10**9)),
            spawn_lane_ids=ListOf(Int(-100, 100)),
            ego_spawn_s_m=metres,
            vehicles_spawn_s_range_m=ListOf(metres, 2, 2),
            vehicles_spawn_gap_m=Float(0.0, 1e4, low_open=True),
            tm_speed_difference_pct=Float(-1000.0, 100.0),
            camera_location_m=ListOf(Float(-100.0, 100.0), 3, 3),
            reset_warmup_ticks=Int(0, 10**5),
            collision_terminate_ticks=Int(0, schema.MAX_EPISODE_STEPS),
        )
        if self.spawn_road_id is not None and not self.spawn_lane_ids:
            raise ValueError("carla.spawn_lane_ids is empty: expected lane ids of spawn_road_id")
        s_range = self.vehicles_spawn_s_range_m
        if s_range[0] > s_range[1]:
            raise ValueError("carla.vehicles_spawn_s_range_m must be [low, high] with low <= high")


@dataclass
class PolicyConfig:
    """Which controller produces the recorded actions."""

    # "perturbed": the expert with injected noise (DART-style), so the data shows the car
    # drifting off its lane centre and the expert steering back, which pure expert data
    # (almost always centred) and random episodes (off the road within a few steps) lack.
    name: Literal["expert", "random", "mixed", "perturbed"] = "expert"
    # For `mixed`: chance of the expert; 0.8 keeps most data on-road while still covering
    # off-expert states and actions that the reward head must learn about.
    expert_prob: float = 0.8
    # `episode`: draw expert/random once per episode; `step`: per step.
    mixed_mode: Literal["episode", "step"] = "episode"
    # For `perturbed`: each step starts a burst with this chance; a burst adds one random
    # steering offset in [-perturb_steer, perturb_steer] for perturb_steps steps. Measured on
    # highway at 5 Hz (6 seeds x 100 steps): 0.1 for 3-4 steps every ~10 steps pushes the car
    # 1-2 m off its lane centre and the expert recovers in most episodes (0.2 crashes often).
    perturb_prob: float = 0.1
    perturb_steps: int = 3
    perturb_steer: float = 0.1
    # ... plus Gaussian noise of this std on every action (both components).
    action_noise_std: float = 0.02
    # For `mixed`: drive the expert's episodes (or steps) with these perturbations too, so a
    # dataset mixes random episodes with expert ones that drift and recover.
    perturb_expert: bool = False

    def __post_init__(self) -> None:
        check_fields(
            self,
            expert_prob=Float(0.0, 1.0),
            perturb_prob=Float(0.0, 1.0),
            perturb_steps=Int(1, schema.MAX_EPISODE_STEPS),
            perturb_steer=Float(0.0, 2.0),  # steering lives in [-1, 1]
            action_noise_std=Float(0.0, 10.0),
        )


@dataclass
class EnvConfig:
    """The simulator an episode runs in: backend, its settings, and the shared reward.

    Collection and fine-tuning use this same config, so an agent trains in the task the data
    was recorded from.
    """

    # The embedded simulator needs no server, so the default runs anywhere.
    backend: Literal["highway", "carla"] = "highway"
    highway: HighwayConfig = field(default_factory=HighwayConfig)
    carla: CarlaConfig = field(default_factory=CarlaConfig)
    # The DBC reward on both backends, so returns compare across data and agents.
    reward: RewardConfig = field(default_factory=RewardConfig)
