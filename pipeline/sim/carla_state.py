"""Privileged state of the CARLA ego: speeds, lanes, lead vehicle, neighbours, extras.

Conventions are those of :mod:`pipeline.sim.carla_env`: CARLA's left-handed frame (z up,
positive to the right), speeds and distances in the frame of the ego's lane, ``lane_index``
0 for the leftmost driving lane of the ego's direction of travel. The ``carla`` module is
passed in, never imported here.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.data import schema

# The same ranges as the highway backend, so captions and probes carry over.
NEIGHBOUR_RANGE_M = schema.NEIGHBOUR_RANGE_M
LEAD_RANGE_M = schema.LEAD_RANGE_M
# Vehicles farther sideways than this are on another road, not in a neighbouring lane.
NEIGHBOUR_LATERAL_RANGE_M = 20.0
_LIGHT_NAMES = {"Red": "red", "Yellow": "yellow", "Green": "green"}


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
    transform = ego.get_transform()
    loc = transform.location
    waypoint = world_map.get_waypoint(loc, project_to_road=True, lane_type=driving)
    fx, fy = _unit_xy(waypoint.transform.get_forward_vector())
    rx, ry = -fy, fx  # CARLA is left-handed: the right of (x, y) is (-y, x)
    velocity = ego.get_velocity()
    lon_speed = velocity.x * fx + velocity.y * fy
    left_widths = _widths_beside(waypoint, "get_left_lane", driving)
    right_widths = _widths_beside(waypoint, "get_right_lane", driving)
    lane_index = len(left_widths)
    lanes_count = lane_index + 1 + len(right_widths)
    centre = waypoint.transform.location
    offset_m = (loc.x - centre.x) * rx + (loc.y - centre.y) * ry  # > 0: right of the centre
    half_width = 0.5 * float(waypoint.lane_width)
    ego_half_length = ego.bounding_box.extent.x

    per_lane = [0] * lanes_count
    lead = None
    for other in traffic:
        other_loc = other.get_location()
        dx, dy = other_loc.x - loc.x, other_loc.y - loc.y
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
        relative = lon_speed - (other_v.x * fx + other_v.y * fy)
        gap_m = max(0.0, distance_m - ego_half_length - other.bounding_box.extent.x)
        if other_lane == lane_index and distance_m > 0 and gap_m <= LEAD_RANGE_M:
            if lead is None or gap_m < lead[0]:
                lead = (gap_m, relative)
        if abs(distance_m) <= NEIGHBOUR_RANGE_M:
            if 0 <= other_lane < lanes_count:
                per_lane[other_lane] += 1

    dt_s = step_duration_s
    accel = 0.0 if prev_lon_speed_mps is None else (lon_speed - prev_lon_speed_mps) / dt_s
    heading = math.radians(transform.rotation.yaw - waypoint.transform.rotation.yaw)
    light = ego.get_traffic_light_state() if ego.is_at_traffic_light() else None
    on_road = world_map.get_waypoint(loc, project_to_road=False, lane_type=driving) is not None
    state = schema.EgoState(
        speed_mps=math.hypot(velocity.x, velocity.y),
        lon_speed_mps=lon_speed,
        lat_speed_mps=velocity.x * rx + velocity.y * ry,
        acceleration_mps2=accel,
        heading_rad=math.remainder(heading, 2 * math.pi),  # relative to the lane
        yaw_rate_radps=math.radians(ego.get_angular_velocity().z),
        lateral_offset_m=offset_m,
        road_edge_left_m=sum(left_widths) + half_width + offset_m,
        road_edge_right_m=sum(right_widths) + half_width - offset_m,
        position_m=[loc.x, loc.y],
        lane_index=lane_index,
        lanes_count=lanes_count,
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
