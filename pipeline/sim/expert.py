"""The highway expert: IDM speed control, MOBIL lane changes and a lane-keeping steering law.

It reads the highway-env road once per policy step and returns the normalised continuous
action ``[acceleration, steering]`` in [-1, 1] that the backend then applies through
highway-env's ``ContinuousAction``, exactly like an agent's action. Gaps are bumper to
bumper (centre distance minus half of both lengths). Lane ids follow highway-env: 0 is
the leftmost lane and ids grow to the right, as does a positive steering angle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from highway_env.road.road import LaneIndex, Road
from highway_env.utils import wrap_to_pi
from highway_env.vehicle.kinematics import Vehicle


@dataclass(frozen=True)
class ExpertParams:
    """Driver-model constants (Treiber's IDM/MOBIL values, made a little more cautious)."""

    # IDM: comfortable acceleration and braking, exponent, jam gap and time headway.
    max_accel_mps2: float = 3.0
    comfort_brake_mps2: float = 3.0
    delta: float = 4.0
    min_gap_m: float = 3.0
    time_headway_s: float = 1.5
    # MOBIL: the speed-up a lane change must bring, and the braking it may impose on the
    # new follower; 0.3 politeness keeps the expert from cutting in on faster traffic.
    politeness: float = 0.3
    lane_change_gain_mps2: float = 0.3
    max_imposed_brake_mps2: float = 2.0
    # A lane change also needs this much bumper gap (plus 0.3 s of own speed) on both sides.
    lane_change_min_gap_m: float = 5.0
    # Seconds between lane-change decisions, so the expert does not weave.
    decision_period_s: float = 1.0
    # Lane keeping: lateral error -> lateral speed (tau_lat), heading error -> yaw rate
    # (tau_heading). Both are slow enough to be stable when a command is held for 0.2 s.
    tau_lateral_s: float = 1.0
    tau_heading_s: float = 0.4
    # Lateral approach angle cap: a lane change takes ~2-3 s at highway speed.
    max_heading_offset_rad: float = 0.2
    # Look ahead this long along the lane for the reference heading (curved lanes).
    pursuit_time_s: float = 0.1


class HighwayExpert:
    """IDM + MOBIL + lane keeping for the ego ``Vehicle`` of a highway-env road."""

    def __init__(
        self,
        target_speed_mps: float,
        accel_range_mps2: float,
        steering_range_rad: float,
        params: ExpertParams | None = None,
    ) -> None:
        self.target_speed_mps = target_speed_mps
        self.accel_range_mps2 = accel_range_mps2
        self.steering_range_rad = steering_range_rad
        self.p = params or ExpertParams()
        self.reset()

    def reset(self) -> None:
        """Forget the lane-change plan (call at every episode start)."""
        self.target_lane: LaneIndex | None = None
        self.since_decision_s = 0.0

    def act(self, road: Road, ego: Vehicle, dt_s: float) -> np.ndarray:
        """The normalised ``[acceleration, steering]`` for the next ``dt_s`` seconds."""
        self.since_decision_s += dt_s
        if self.target_lane is None or self.target_lane[:2] != ego.lane_index[:2]:
            self.target_lane = ego.lane_index
        changing = self.target_lane != ego.lane_index or abs(self._lateral(ego)) > 0.5
        if changing:
            # The decision period counts from the end of a change, so the expert never weaves.
            self.since_decision_s = 0.0
            self._abort_if_unsafe(road, ego)
        elif self.since_decision_s >= self.p.decision_period_s:
            self.since_decision_s = 0.0
            self._choose_lane(road, ego)

        accel = self._lane_accel(road, ego, ego.lane_index)
        if self.target_lane != ego.lane_index:
            # Mid-change, respect the leaders of both lanes.
            accel = min(accel, self._lane_accel(road, ego, self.target_lane))
        steering = self._steering(road, ego)
        action = [accel / self.accel_range_mps2, steering / self.steering_range_rad]
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    # Longitudinal ------------------------------------------------------------------------

    def idm(
        self, speed: float, target_speed: float, gap_m: float | None, lead_speed: float
    ) -> float:
        """IDM acceleration [m/s^2]; ``gap_m=None`` means a free road."""
        p = self.p
        accel = 1.0 - (max(speed, 0.0) / max(target_speed, 1.0)) ** p.delta
        if gap_m is not None:
            dynamic = speed * p.time_headway_s + speed * (speed - lead_speed) / (
                2.0 * np.sqrt(p.max_accel_mps2 * p.comfort_brake_mps2)
            )
            desired = p.min_gap_m + max(0.0, dynamic)
            accel -= (desired / max(gap_m, 0.1)) ** 2
        return p.max_accel_mps2 * accel

    def _lane_accel(self, road: Road, ego: Vehicle, lane_index: LaneIndex) -> float:
        front, _ = road.neighbour_vehicles(ego, lane_index)
        gap = _gap(road, ego, front, lane_index) if front is not None else None
        return self.idm(ego.speed, self.target_speed_mps, gap, front.speed if front else 0.0)

    def _follower_accel(self, road, follower, lane_index, front) -> float:
        """IDM acceleration of ``follower`` if ``front`` were its leader in ``lane_index``."""
        if follower is None:
            return 0.0
        target = getattr(follower, "target_speed", follower.speed)
        if front is None:
            return self.idm(follower.speed, target, None, 0.0)
        gap = _gap(road, follower, front, lane_index)
        return self.idm(follower.speed, target, gap, front.speed)

    # Lateral decisions -------------------------------------------------------------------

    def _choose_lane(self, road: Road, ego: Vehicle) -> None:
        """MOBIL: move to the side lane with the best safe acceleration gain, if any."""
        if ego.speed < 1.0:
            return
        best_gain, best_lane = self.p.lane_change_gain_mps2, None
        for lane_index in road.network.side_lanes(ego.lane_index):
            if not road.network.get_lane(lane_index).is_reachable_from(ego.position):
                continue
            gain = self._mobil_gain(road, ego, lane_index)
            if gain is not None and gain > best_gain:
                best_gain, best_lane = gain, lane_index
        if best_lane is not None:
            self.target_lane = best_lane

    def _mobil_gain(self, road: Road, ego: Vehicle, lane_index: LaneIndex) -> float | None:
        """The MOBIL incentive of moving to ``lane_index``; ``None`` if it is unsafe."""
        if not self._is_safe(road, ego, lane_index):
            return None
        new_front, new_rear = road.neighbour_vehicles(ego, lane_index)
        old_front, old_rear = road.neighbour_vehicles(ego, ego.lane_index)
        own_gain = self._lane_accel(road, ego, lane_index) - self._lane_accel(
            road, ego, ego.lane_index
        )
        new_rear_cost = self._follower_accel(road, new_rear, lane_index, ego) - (
            self._follower_accel(road, new_rear, lane_index, new_front)
        )
        old_rear_gain = self._follower_accel(road, old_rear, ego.lane_index, old_front) - (
            self._follower_accel(road, old_rear, ego.lane_index, ego)
        )
        return own_gain + self.p.politeness * (new_rear_cost + old_rear_gain)

    def _is_safe(self, road: Road, ego: Vehicle, lane_index: LaneIndex) -> bool:
        """Enough room ahead and behind in ``lane_index``, and no hard braking imposed."""
        front, rear = road.neighbour_vehicles(ego, lane_index)
        min_gap = self.p.lane_change_min_gap_m + 0.3 * ego.speed
        if front is not None and _gap(road, ego, front, lane_index) < min_gap:
            return False
        if rear is not None:
            if _gap(road, rear, ego, lane_index) < min_gap:
                return False
            if self._follower_accel(road, rear, lane_index, ego) < -self.p.max_imposed_brake_mps2:
                return False
        return True

    def _abort_if_unsafe(self, road: Road, ego: Vehicle) -> None:
        """Return to the original lane if the target lane closed up early in the change."""
        if self.target_lane == ego.lane_index or self._is_safe(road, ego, self.target_lane):
            return
        self.target_lane = ego.lane_index

    # Steering ---------------------------------------------------------------------------

    def _lateral(self, ego: Vehicle) -> float:
        lane = ego.road.network.get_lane(self.target_lane)
        return lane.local_coordinates(ego.position)[1]

    def _steering(self, road: Road, ego: Vehicle) -> float:
        """Steering angle [rad] that turns the heading toward the target lane centre."""
        p = self.p
        lane = road.network.get_lane(self.target_lane)
        lon, lat = lane.local_coordinates(ego.position)
        speed = max(ego.speed, 1.0)
        lane_heading = lane.heading_at(lon + speed * p.pursuit_time_s)
        # Lateral error -> lateral speed -> heading offset relative to the lane.
        lateral_speed = -lat / p.tau_lateral_s
        offset = np.arcsin(np.clip(lateral_speed / speed, -1.0, 1.0))
        offset = np.clip(offset, -p.max_heading_offset_rad, p.max_heading_offset_rad)
        heading_rate = wrap_to_pi(lane_heading + offset - ego.heading) / p.tau_heading_s
        # Invert the kinematic bicycle: yaw rate = v sin(beta) / (L/2), tan(delta) = 2 tan(beta).
        slip = np.arcsin(np.clip(heading_rate * ego.LENGTH / 2 / speed, -1.0, 1.0))
        return float(np.arctan(2.0 * np.tan(slip)))


def _gap(road: Road, rear: Vehicle, front: Vehicle, lane_index: LaneIndex) -> float:
    """Bumper gap from ``rear`` to ``front`` along ``lane_index`` [m]."""
    lane = road.network.get_lane(lane_index)
    centre = lane.local_coordinates(front.position)[0] - lane.local_coordinates(rear.position)[0]
    return centre - (rear.LENGTH + front.LENGTH) / 2
