"""The ``scene`` captioner: captions written from the simulator's privileged state.

Deterministic, offline and fast: the embedded default and a sanity reference for the VLM.
The semantic caption says what is where (lane, lead vehicle, neighbours, traffic light,
weather); the motion caption says who moves how between the earlier and the current step
(ego speed, acceleration, lane changes, closing in on the lead, collisions).

State fields follow the simulators' conventions: lane 0 is the leftmost lane in the
driving direction, positive lateral speed points right, ``lead_distance_m`` is the gap to
the lead vehicle and a positive ``lead_closing_speed_mps`` means the gap shrinks.
"""

from __future__ import annotations

import re

from pipeline.annotate.base import Caption, Step
from pipeline.annotate.config import SceneConfig
from pipeline.data import schema

# Bump when the wording changes: it is part of the captioner id in the manifest.
SCENE_VERSION = 2  # 2: where in the lane the car is, and toward which road edge it drifts

_KMH_PER_MPS = 3.6
_STANDSTILL_MPS = 0.5
_HARD_BRAKE_MPS2 = 3.0
# Lead distance bins (upper bounds in metres) and their words.
_DISTANCE_WORDS = ((10.0, "very close"), (25.0, "close"), (50.0, "at a medium distance"))
# Ego speed bins (upper bounds in km/h) and their words.
_SPEED_WORDS = ((30.0, "slowly"), (60.0, "at moderate speed"), (90.0, "fast"))
_NO_LIGHT = ("", "unknown", "off", "none")


class SceneCaptioner:
    """Captions from ``state.json``; see the module docstring for the wording."""

    needs_frames = False
    prompt_hashes: dict[str, str] = {}

    def __init__(self, cfg: SceneConfig):
        self.cfg = cfg
        self.id = f"scene-v{SCENE_VERSION}"
        self.num_retried = 0

    def caption(self, steps: list[Step]) -> list[Caption]:
        return [Caption(self.semantic(s.state), self.motion(s.prev_state, s.state)) for s in steps]

    def semantic(self, state: dict) -> str:
        """What is where: lane, lead vehicle, adjacent lanes, traffic light, weather."""
        sentences = [
            _lane_sentence(state, self._lane_position(state)),
            self._lead_sentence(schema.lead_distance_m(state)),
            _neighbour_sentence(state),
            _traffic_light_sentence(state.get("traffic_light")),
            _weather_sentence(state.get("weather")),
            "The ego car is off the road." if state.get("on_road") is False else "",
        ]
        return " ".join(s for s in sentences if s)

    def motion(self, prev: dict, state: dict) -> str:
        """Who moves how, from the earlier state ``prev`` to the current ``state``."""
        cfg = self.cfg
        speed_mps = float(state.get("speed_mps") or 0.0)
        accel = _acceleration(prev, state)
        if speed_mps < _STANDSTILL_MPS:
            ego = "The ego car is standing still"
            ego += ", starting to move." if accel > cfg.accel_threshold_mps2 else "."
        else:
            kmh = _round_to(speed_mps * _KMH_PER_MPS, cfg.speed_step_kmh)
            word = next((w for limit, w in _SPEED_WORDS if kmh < limit), "very fast")
            ego = f"The ego car drives {word} at {_fmt(kmh)} km/h, {self._longitudinal(accel)} and {self._lateral(prev, state)}."
        sentences = [
            ego,
            self._lead_motion(schema.lead_distance_m(state), state.get("lead_closing_speed_mps")),
            "It crosses a lane marking." if state.get("lane_invasion") else "",
            "It collides with another vehicle!" if state.get("collision") else "",
        ]
        return " ".join(s for s in sentences if s)

    def _lane_position(self, state: dict) -> str:
        """Where in its lane the car is: centred, off-centre (to 0.5 m), or near a road edge."""
        offset = state.get("lateral_offset_m")
        if offset is None:
            return ""
        edges = {side: state.get(f"road_edge_{side}_m") for side in ("left", "right")}
        for side, distance in edges.items():
            if distance is not None and distance < self.cfg.road_edge_near_m:
                return f"near the {side} edge of the road"
        if abs(offset) <= self.cfg.centred_within_m:
            return "centred"
        rounded = max(0.5, round(2 * abs(offset)) / 2)
        return f"{_fmt(rounded)} m {'right' if offset > 0 else 'left'} of the lane centre"

    def _lead_sentence(self, distance_m: float | None) -> str:
        if distance_m is None:
            return "The lane ahead is clear."
        rounded = _round_to(distance_m, self.cfg.distance_step_m)
        word = next((w for limit, w in _DISTANCE_WORDS if rounded < limit), "far")
        return f"A car is {word}, {_fmt(rounded)} m ahead in the same lane."

    def _longitudinal(self, accel_mps2: float) -> str:
        if accel_mps2 > self.cfg.accel_threshold_mps2:
            return "accelerating"
        if accel_mps2 < -_HARD_BRAKE_MPS2:
            return "braking hard"
        if accel_mps2 < -self.cfg.accel_threshold_mps2:
            return "braking"
        return "holding its speed"

    def _lateral(self, prev: dict, state: dict) -> str:
        lane, prev_lane = state.get("lane_index"), prev.get("lane_index")
        if lane is not None and prev_lane is not None and lane != prev_lane:
            return f"changing lanes to the {'left' if lane < prev_lane else 'right'}"
        lat_mps = float(state.get("lat_speed_mps") or 0.0)
        if abs(lat_mps) <= self.cfg.lateral_threshold_mps:
            return "keeping its lane"
        side = "right" if lat_mps > 0 else "left"
        lanes = state.get("lanes_count")
        if (
            lane is not None
            and lanes is not None
            and 0 <= lane + (1 if side == "right" else -1) < lanes
        ):
            return f"changing lanes to the {side}"
        edge = state.get(f"road_edge_{side}_m")
        if edge is not None:
            return f"drifting toward the {side} edge of the road, {_fmt(max(0.5, round(2 * edge) / 2))} m away"
        return f"drifting to the {side}"

    def _lead_motion(self, distance_m: float | None, closing_mps: float | None) -> str:
        if distance_m is None or closing_mps is None:
            return ""
        threshold = self.cfg.closing_threshold_mps
        if closing_mps > threshold:
            return f"It closes in on the car ahead at {max(1, round(closing_mps))} m/s."
        if closing_mps < -threshold:
            return f"It falls back from the car ahead at {max(1, round(-closing_mps))} m/s."
        return "It follows the car ahead at a steady gap."


def _lane_sentence(state: dict, position: str = "") -> str:
    lane, lanes = state.get("lane_index"), state.get("lanes_count")
    if lane is None or lanes is None:
        return ""
    where = f", {position}" if position else ""
    if lanes <= 1:
        return f"The ego car drives on a single-lane road{where}."
    if lane == 0:
        name = "the left lane"
    elif lane == lanes - 1:
        name = "the right lane"
    elif lanes == 3:
        name = "the middle lane"
    else:
        name = f"lane {lane + 1} from the left"
    return f"The ego car is in {name} of {lanes}{where}."


def _neighbour_sentence(state: dict) -> str:
    lane, per_lane = state.get("lane_index"), state.get("neighbours_per_lane")
    if lane is None or per_lane is None:
        return ""
    phrases = []
    for side, other in (("left", lane - 1), ("right", lane + 1)):
        if not 0 <= other < len(per_lane):
            phrases.append(f"no lane to the {side}")
        elif per_lane[other] == 0:
            phrases.append(f"the lane to the {side} is empty")
        else:
            count = per_lane[other]
            phrases.append(f"{count} car{'s' if count > 1 else ''} in the lane to the {side}")
    text = ", ".join(phrases)
    return text[0].upper() + text[1:] + "."


def _traffic_light_sentence(light: object) -> str:
    """CARLA's traffic light state: a name ("Red") or a mapping with a "state" entry."""
    if isinstance(light, dict):
        light = light.get("state")
    name = str(light or "").strip().lower()
    return "" if name in _NO_LIGHT else f"The traffic light ahead is {name}."


def _weather_sentence(weather: object) -> str:
    """CARLA's weather: a preset name ("ClearNoon") or a mapping of its parameters."""
    if not weather:
        return ""
    if isinstance(weather, dict):
        words = []
        rain = float(weather.get("precipitation") or 0.0)
        if rain >= 30:
            words.append("rain")
        elif rain >= 5:
            words.append("light rain")
        if float(weather.get("cloudiness") or 0.0) >= 50:
            words.append("cloudy")
        if float(weather.get("fog_density") or 0.0) >= 30:
            words.append("fog")
        if float(weather.get("wetness") or 0.0) >= 50:
            words.append("wet road")
        sun = weather.get("sun_altitude_angle")
        if sun is not None:
            words.append("night" if float(sun) < 0 else "daylight")
        text = ", ".join(words) or "clear"
    else:
        text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(weather)).replace("_", " ").lower()
    return f"Weather: {text}."


def _acceleration(prev: dict, state: dict) -> float:
    """The recorded acceleration, else the speed change over the elapsed time."""
    if state.get("acceleration_mps2") is not None:
        return float(state["acceleration_mps2"])
    dt_s = float(state.get("time_s") or 0.0) - float(prev.get("time_s") or 0.0)
    if dt_s <= 0:
        return 0.0
    return (float(state.get("speed_mps") or 0.0) - float(prev.get("speed_mps") or 0.0)) / dt_s


def _round_to(value: float, step: float) -> float:
    return round(round(value / step) * step, 2)


def _fmt(value: float) -> str:
    return f"{value:g}"
