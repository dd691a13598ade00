"""Privileged state of the CARLA ego: speeds, lanes, lead vehicle, neighbours, extras.

Conventions are those of :mod:`pipeline.sim.carla_env`: CARLA's left-handed frame (z up,
positive to the right), speeds and distances in the frame of the ego's lane, ``lane_index``
0 for the leftmost driving lane of the ego's direction of travel. The ``carla`` module is
passed in, never imported here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from pipeline.data import schema

# The same ranges as the highway backend, so captions and probes carry over.
NEIGHBOUR_RANGE_M = schema.NEIGHBOUR_RANGE_M
LEAD_RANGE_M = schema.LEAD_RANGE_M
# Vehicles farther sideways than this are on another road, not in a neighbouring lane.
NEIGHBOUR_LATERAL_RANGE_M = 20.0
_LIGHT_NAMES = {"Red": "red", "Yellow": "yellow", "Green": "green"}


class _LaneFrame(NamedTuple):
    """The ego in the frame of its lane (CARLA's left-handed axes)."""

    x: float  # the ego's position
    y: float
    fx: float  # unit vector along the lane
    fy: float
    rx: float  # unit vector to the lane's right
    ry: float
    lon_speed_mps: float  # the ego's speed along the lane
    lane_index: int
    lanes_count: int
    half_length_m: float  # the ego's half length, bumper to centre
    offset_m: float  # from the lane centre, > 0 to its right
    edge_left_m: float  # from the ego to the road's left edge (same direction of travel)
    edge_right_m: float
    heading_rad: float  # the ego's yaw minus the lane's


def _lane_frame(
    world_map: Any, driving: Any, ego: Any, transform: Any, velocity: Any
) -> _LaneFrame:
    """Where the ego (at ``transform``, moving at ``velocity``) is in its lane."""
    loc = transform.location
    waypoint = world_map.get_waypoint(loc, project_to_road=True, lane_type=driving)
    fx, fy = _unit_xy(waypoint.transform.get_forward_vector())
    rx, ry = -fy, fx  # CARLA is left-handed: the right of (x, y) is (-y, x)
    left_widths = _widths_beside(waypoint, "get_left_lane", driving)
    right_widths = _widths_beside(waypoint, "get_right_lane", driving)
    lane_index = len(left_widths)
    centre = waypoint.transform.location
    offset_m = (loc.x - centre.x) * rx + (loc.y - centre.y) * ry
    half_width = 0.5 * float(waypoint.lane_width)
    return _LaneFrame(
        x=loc.x,
        y=loc.y,
        fx=fx,
        fy=fy,
        rx=rx,
        ry=ry,
        lon_speed_mps=velocity.x * fx + velocity.y * fy,
        lane_index=lane_index,
        lanes_count=lane_index + 1 + len(right_widths),
        half_length_m=ego.bounding_box.extent.x,
        offset_m=offset_m,
        edge_left_m=sum(left_widths) + half_width + offset_m,
        edge_right_m=sum(right_widths) + half_width - offset_m,
        heading_rad=math.radians(transform.rotation.yaw - waypoint.transform.rotation.yaw),
    )


def _lead_and_neighbours(
    world_map: Any, driving: Any, ego: _LaneFrame, traffic: list
) -> tuple[tuple[float, float] | None, list[int]]:
    """The lead vehicle's (bumper-to-bumper gap, closing speed) in the ego's lane (None when
    none is within LEAD_RANGE_M), and the vehicles per lane of the ego's direction within
    NEIGHBOUR_RANGE_M ahead or behind."""
    fx, fy, rx, ry = ego.fx, ego.fy, ego.rx, ego.ry
    per_lane = [0] * ego.lanes_count
    lead = None
    for other in traffic:
        other_loc = other.get_location()
        dx, dy = other_loc.x - ego.x, other_loc.y - ego.y
        distance_m = dx * fx + dy * fy
        if (
            abs(distance_m) > LEAD_RANGE_M + 10.0
            or abs(dx * rx + dy * ry) > NEIGHBOUR_LATERAL_RANGE_M
        ):
            continue
        other_wp = world_map.get_waypoint(other_loc, project_to_road=True, lane_type=driving)
        ox, oy = _unit_xy(other_wp.transform.get_forward_vector())
        if ox * fx + oy * fy <= 0.0:  # the other carriageway
            continue
        other_lane = _lanes_beside(other_wp, "get_left_lane", driving)
        other_v = other.get_velocity()
        relative = ego.lon_speed_mps - (other_v.x * fx + other_v.y * fy)
        gap_m = max(0.0, distance_m - ego.half_length_m - other.bounding_box.extent.x)
        if other_lane == ego.lane_index and distance_m > 0 and gap_m <= LEAD_RANGE_M:
            if lead is None or gap_m < lead[0]:
                lead = (gap_m, relative)
        if abs(distance_m) <= NEIGHBOUR_RANGE_M:
            if 0 <= other_lane < ego.lanes_count:
                per_lane[other_lane] += 1
    return lead, per_lane


def ego_state(
    carla: Any,
    world_map: Any,
    ego: Any,
    traffic: list,
    *,
    impulse: float,
    crossed: bool,
    steer: float,
    prev_lon_speed_mps: float | None,
    step_duration_s: float,
    num_steps: int,
    weather: str | None,
) -> dict:
    """JSON-ready state with the highway backend's keys plus traffic_light, weather,
    lane_invasion. Lead distance is the bumper-to-bumper gap (``schema.LEAD_RANGE_M``
    with ``lead_present`` false when there is none); its closing speed is positive when
    the gap shrinks. ``prev_lon_speed_mps`` (None on reset) gives the acceleration."""
    driving = carla.LaneType.Driving
    transform, velocity = ego.get_transform(), ego.get_velocity()
    loc = transform.location
    frame = _lane_frame(world_map, driving, ego, transform, velocity)
    lead, per_lane = _lead_and_neighbours(world_map, driving, frame, traffic)
    lon_speed, dt_s = frame.lon_speed_mps, step_duration_s
    accel = 0.0 if prev_lon_speed_mps is None else (lon_speed - prev_lon_speed_mps) / dt_s
    light = ego.get_traffic_light_state() if ego.is_at_traffic_light() else None
    on_road = world_map.get_waypoint(loc, project_to_road=False, lane_type=driving) is not None
    state = schema.EgoState(
        speed_mps=math.hypot(velocity.x, velocity.y),
        lon_speed_mps=lon_speed,
        lat_speed_mps=velocity.x * frame.rx + velocity.y * frame.ry,
        acceleration_mps2=accel,
        heading_rad=math.remainder(frame.heading_rad, 2 * math.pi),  # relative to the lane
        yaw_rate_radps=math.radians(ego.get_angular_velocity().z),
        lateral_offset_m=frame.offset_m,
        road_edge_left_m=frame.edge_left_m,
        road_edge_right_m=frame.edge_right_m,
        position_m=[loc.x, loc.y],
        lane_index=frame.lane_index,
        lanes_count=frame.lanes_count,
        **schema.EgoState.lead_fields(lead),
        neighbours_per_lane=per_lane,
        collision=impulse > 0.0,
        collision_impulse=impulse,
        on_road=on_road,
        steer=steer,
        time_s=num_steps * dt_s,
    ).to_json()
    light_name = None if light is None else _LIGHT_NAMES.get(light.name)
    return {
        **state,
        "traffic_light": light_name or schema.NO_TRAFFIC_LIGHT,
        "weather": weather,
        "lane_invasion": bool(crossed),
    }


def describe_weather(weather: Any) -> str:
    """A preset-like phrase: "clear, day", "cloudy, heavy rain, night"..."""
    sky = (
        "clear"
        if weather.cloudiness < 20
        else "partly cloudy"
        if weather.cloudiness < 60
        else "cloudy"
    )
    parts = [sky]
    if weather.precipitation >= 10:
        parts.append("heavy rain" if weather.precipitation >= 50 else "rain")
    if weather.fog_density >= 30:
        parts.append("fog")
    altitude = weather.sun_altitude_angle
    parts.append("night" if altitude < 0 else "low sun" if altitude < 15 else "day")
    return ", ".join(parts)


def _lanes_beside(waypoint: Any, side: str, driving: Any) -> int:
    """Driving lanes of the same direction next to ``waypoint`` on one side."""
    return len(_widths_beside(waypoint, side, driving))


def _widths_beside(waypoint: Any, side: str, driving: Any) -> list[float]:
    """Widths of the driving lanes of the same direction next to ``waypoint`` on one side."""
    widths, lane = [], getattr(waypoint, side)()
    while (
        lane is not None
        and len(widths) < 16
        and lane.lane_type == driving
        and lane.lane_id * waypoint.lane_id > 0
    ):
        widths.append(float(lane.lane_width))
        lane = getattr(lane, side)()
    return widths


def _unit_xy(vector: Any) -> tuple[float, float]:
    norm = math.hypot(vector.x, vector.y) or 1.0
    return vector.x / norm, vector.y / norm
