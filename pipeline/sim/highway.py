"""The embedded highway simulator: highway-env (gymnasium) behind :class:`DrivingEnv`.

The observation is highway-env's top-down render, following the ego, at the configured
size. Actions go through highway-env's ``ContinuousAction`` (``[acceleration, steering]``
in [-1, 1] -> +-5 m/s^2, +-45 degrees), held for all simulator ticks of a step.

Sign conventions are highway-env's: the road runs along +x, lane 0 is the leftmost lane
in the driving direction and lane ids grow to the right (they are drawn top to bottom);
positive steering, heading, yaw rate and lateral speed all point to the right, toward
higher lane ids.
"""

from __future__ import annotations

import os

# Must precede the first pygame import: the "dummy" video driver renders black frames.
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
from highway_env.envs.common.action import ContinuousAction  # noqa: E402
from highway_env.envs.highway_env import HighwayEnv as _GymHighwayEnv  # noqa: E402
from highway_env.road.road import Road, RoadNetwork  # noqa: E402
from highway_env.utils import wrap_to_pi  # noqa: E402
from highway_env.vehicle.kinematics import Vehicle  # noqa: E402

from pipeline.data import schema  # noqa: E402
from pipeline.errors import SemoreError  # noqa: E402
from pipeline.sim.base import (  # noqa: E402
    ACTION_DIM,
    RewardConfig,
    StepResult,
    checked_action,
    driving_reward,
)
from pipeline.sim.configs import HighwayConfig  # noqa: E402
from pipeline.sim.expert import HighwayExpert  # noqa: E402

# The privileged state looks this far along the road for neighbours and the lead vehicle.
NEIGHBOUR_RANGE_M = schema.NEIGHBOUR_RANGE_M
LEAD_RANGE_M = schema.LEAD_RANGE_M


class _TickedHighway(_GymHighwayEnv):
    """highway-env's highway that measures the ego's forward progress on every tick."""

    forward_distance_m: float = 0.0

    def _create_road(self) -> None:
        # Long enough that no episode reaches the end of the road, even at top speed.
        duration_s = self.config["max_episode_steps"] / self.config["policy_frequency"]
        length_m = max(10_000.0, 2.0 * Vehicle.MAX_SPEED * duration_s)
        self.road = Road(
            network=RoadNetwork.straight_road_network(
                self.config["lanes_count"], length=length_m, speed_limit=30
            ),
            np_random=self.np_random,
            record_history=False,
        )

    def _simulate(self, action: np.ndarray | None = None) -> None:
        """Same as highway-env's loop (act once, then tick), plus per-tick progress."""
        dt_s = 1.0 / self.config["simulation_frequency"]
        ticks = self.config["simulation_frequency"] // self.config["policy_frequency"]
        self.forward_distance_m = 0.0
        for tick in range(ticks):
            if action is not None and tick == 0:
                self.action_type.act(action)
            # Progress along the lane the ego is on at the start of the tick.
            lane = self.vehicle.lane
            start_m = lane.local_coordinates(self.vehicle.position)[0]
            self.road.act()
            self.road.step(dt_s)
            self.steps += 1
            self.forward_distance_m += lane.local_coordinates(self.vehicle.position)[0] - start_m

    def _reward(self, action: np.ndarray) -> float:
        return 0.0  # the wrapper computes the DBC reward

    def _info(self, obs, action=None) -> dict:
        return {}  # skips highway-env's reward terms, which nothing reads


class HighwayEnv:
    """One highway-env episode at a time, as a :class:`pipeline.sim.base.DrivingEnv`."""

    action_dim = ACTION_DIM

    def __init__(self, cfg: HighwayConfig, reward: RewardConfig) -> None:
        if os.environ.get("SDL_VIDEODRIVER") == "dummy":
            raise SemoreError(
                "SDL_VIDEODRIVER=dummy renders black highway frames: expected it unset or 'offscreen'"
            )
        self.cfg = cfg
        self.reward_cfg = reward
        self.camera_names = ["rgb"]
        self.image_shape = (cfg.image_height, cfg.image_width)
        self._env = _TickedHighway(config=_gym_config(cfg), render_mode="rgb_array")
        accel_range = ContinuousAction.ACCELERATION_RANGE[1]
        steering_range = ContinuousAction.STEERING_RANGE[1]
        self._expert = HighwayExpert(cfg.target_speed_mps, accel_range, steering_range)
        self._num_steps: int | None = None  # None until the first reset

    @property
    def step_duration_s(self) -> float:
        return 1.0 / self.cfg.policy_frequency_hz

    def reset(self, seed: int) -> tuple[dict[str, np.ndarray], dict]:
        # Seeds highway-env's np_random, which places the traffic and draws its behaviour.
        self._env.reset(seed=int(seed))
        self._expert.reset()
        self._num_steps = 0
        state = self._state(accel=0.0, yaw_rate=0.0, collision=False, steer=0.0)
        return self._frames(), state

    def step(self, action: np.ndarray | None) -> StepResult:
        if self._num_steps is None:
            raise SemoreError("highway step() called before reset(seed): expected reset first")
        ego = self._env.vehicle
        if action is None:
            action = self._expert.act(self._env.road, ego, self.step_duration_s)
        action = checked_action(action, "highway", ("acceleration", "steering"))
        was_crashed, speed_mps, heading_rad = ego.crashed, ego.speed, ego.heading

        self._env.step(action)
        self._num_steps += 1

        dt_s = self.step_duration_s
        collision = ego.crashed and not was_crashed
        impulse = self.cfg.collision_impulse if collision else 0.0
        steer = float(action[1])
        distance_m = float(self._env.forward_distance_m)
        state = self._state(
            accel=(ego.speed - speed_mps) / dt_s,
            yaw_rate=wrap_to_pi(ego.heading - heading_rad) / dt_s,
            collision=collision,
            steer=steer,
        )
        return StepResult(
            frames=self._frames(),
            action=action,
            reward=driving_reward(self.reward_cfg, distance_m, impulse, steer),
            terminated=bool(ego.crashed or not ego.on_road),
            truncated=self._num_steps >= self.cfg.max_episode_steps,
            state=state,
            distance_m=distance_m,
        )

    def expert_action(self) -> np.ndarray:
        """The expert's ``[acceleration, steering]`` for the current state (not applied)."""
        return self._expert.act(self._env.road, self._env.vehicle, self.step_duration_s)

    def reconnect(self) -> None:
        """Nothing to reconnect: the simulator runs in this process."""

    def close(self) -> None:
        self._env.close()

    def _frames(self) -> dict[str, np.ndarray]:
        frame = np.ascontiguousarray(self._env.render(), dtype=np.uint8)  # (H, W, 3)
        return {"rgb": frame}

    def _road_edges(self, lane_index: int, offset_m: float, width_m: float) -> dict:
        """Distances from the ego's centre to the road's outer edges (all lanes ``width_m``)."""
        lanes = self.cfg.lanes_count
        return {
            "road_edge_left_m": (lane_index + 0.5) * width_m + offset_m,
            "road_edge_right_m": (lanes - lane_index - 0.5) * width_m - offset_m,
        }

    def _state(self, accel: float, yaw_rate: float, collision: bool, steer: float) -> dict:
        """The privileged state (plain JSON types, units in the names, signs as above).

        ``lead_distance_m`` is the bumper gap to the nearest vehicle ahead in the ego lane
        (``schema.LEAD_RANGE_M`` with ``lead_present`` false when there is none); the lead's
        closing speed is positive when the gap shrinks. Speeds along and across
        the lane follow the direction of travel (heading plus the bicycle's slip angle).
        """
        road, ego = self._env.road, self._env.vehicle
        lane = ego.lane
        ego_lon_m, offset_m = lane.local_coordinates(ego.position)  # offset > 0: to the right
        lane_heading = lane.heading_at(ego_lon_m)
        heading = wrap_to_pi(ego.heading - lane_heading)
        # The kinematic bicycle moves along heading + slip angle, not along the heading.
        slip = np.arctan(0.5 * np.tan(ego.action["steering"]))
        ego_lon_speed = ego.speed * np.cos(heading + slip)
        ego_lane = int(ego.lane_index[2])

        per_lane = [0] * self.cfg.lanes_count
        lead = None
        for other in road.vehicles:
            if other is ego:
                continue
            distance_m = lane.local_coordinates(other.position)[0] - ego_lon_m  # centre to centre
            if abs(distance_m) > LEAD_RANGE_M + other.LENGTH:
                continue
            other_lane = int(other.lane_index[2])
            other_lon_speed = other.speed * np.cos(wrap_to_pi(other.heading - lane_heading))
            gap_m = max(0.0, distance_m - (ego.LENGTH + other.LENGTH) / 2)
            if other_lane == ego_lane and distance_m > 0 and gap_m <= LEAD_RANGE_M:
                if lead is None or gap_m < lead[0]:
                    lead = (gap_m, float(ego_lon_speed - other_lon_speed))
            if abs(distance_m) <= NEIGHBOUR_RANGE_M:
                if 0 <= other_lane < len(per_lane):
                    per_lane[other_lane] += 1
        return schema.EgoState(
            speed_mps=ego.speed,
            lon_speed_mps=ego_lon_speed,
            lat_speed_mps=ego.speed * np.sin(heading + slip),
            acceleration_mps2=accel,
            heading_rad=heading,
            yaw_rate_radps=yaw_rate,
            lateral_offset_m=offset_m,
            **self._road_edges(ego_lane, offset_m, lane.width_at(ego_lon_m)),
            position_m=list(ego.position),
            lane_index=ego_lane,
            lanes_count=self.cfg.lanes_count,
            **schema.EgoState.lead_fields(lead),
            neighbours_per_lane=per_lane,
            collision=collision,
            collision_impulse=self.cfg.collision_impulse if collision else 0.0,
            on_road=ego.on_road,
            steer=steer,
            time_s=self._num_steps * self.step_duration_s,
        ).to_json()


def _gym_config(cfg: HighwayConfig) -> dict:
    """highway-env's config dict for a :class:`HighwayConfig`."""
    return {
        # The render is the observation; an empty attribute observation costs nothing.
        "observation": {"type": "AttributesObservation", "attributes": []},
        # Braking stops the car but never reverses it (as with CARLA's throttle/brake).
        "action": {"type": "ContinuousAction", "speed_range": [0.0, Vehicle.MAX_SPEED]},
        "lanes_count": cfg.lanes_count,
        "vehicles_count": cfg.vehicles_count,
        "vehicles_density": cfg.vehicles_density,
        "simulation_frequency": cfg.simulation_frequency_hz,
        "policy_frequency": cfg.policy_frequency_hz,
        "max_episode_steps": cfg.max_episode_steps,
        # Episodes end in the wrapper (step count); highway-env's own timer never fires.
        "duration": float("inf"),
        "screen_width": cfg.image_width,
        "screen_height": cfg.image_height,
        "scaling": cfg.render_scaling,
        "centering_position": [cfg.render_ego_x_fraction, 0.5],
        "offscreen_rendering": True,
    }
