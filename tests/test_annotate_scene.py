"""The ``scene`` captioner and the motion targets: captions carry the state, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.annotate.base import Step
from pipeline.annotate.config import SceneConfig
from pipeline.annotate.scene import SceneCaptioner
from pipeline.data import schema
from pipeline.data.schema import MOTION_STATE_FIELDS as STATE_FIELDS
from pipeline.data.schema import motion_targets
from pipeline.errors import SemoreError
from tests.conftest import synthetic_state


def _state(**changes) -> dict:
    state = synthetic_state(episode=0, step=2, dt_s=0.2)
    state.update(changes)
    return state


@pytest.fixture
def captioner() -> SceneCaptioner:
    return SceneCaptioner(SceneConfig())


def test_semantic_caption_names_lane_lead_and_neighbours(captioner):
    state = _state(lane_index=1, lanes_count=3, lead_distance_m=18.2, neighbours_per_lane=[2, 1, 0])
    assert captioner.semantic(state) == (
        "The ego car is in the middle lane of 3, centred. A car is close, 20 m ahead in the same lane. "
        "2 cars in the lane to the left, the lane to the right is empty."
    )
    edge = _state(
        lane_index=0, lanes_count=4, lead_distance_m=None, neighbours_per_lane=[0, 1, 0, 0]
    )
    assert captioner.semantic(edge) == (
        "The ego car is in the left lane of 4, centred. The lane ahead is clear. "
        "No lane to the left, 1 car in the lane to the right."
    )
    # what the backends record when no vehicle is ahead: lead_present false, the range cap
    no_lead = dict(edge, lead_present=False, lead_distance_m=schema.LEAD_RANGE_M)
    assert captioner.semantic(no_lead) == captioner.semantic(edge)
    assert "car ahead" not in captioner.motion(no_lead, dict(no_lead, lead_closing_speed_mps=0.0))
    assert "lane 2 from the left of 4" in captioner.semantic(
        _state(lane_index=1, lanes_count=4, neighbours_per_lane=[0] * 4)
    )
    assert "very close, 5 m" in captioner.semantic(_state(lead_distance_m=4.0))
    assert "far, 80 m" in captioner.semantic(_state(lead_distance_m=81.0))


def test_carla_fields_appear_when_present(captioner):
    text = captioner.semantic(_state(traffic_light="Red", weather="WetCloudyNoon", on_road=False))
    assert "The traffic light ahead is red." in text and "Weather: wet cloudy noon." in text
    assert "off the road" in text
    text = captioner.semantic(
        _state(
            traffic_light={"state": "Green"},
            weather={"precipitation": 60, "sun_altitude_angle": -10},
        )
    )
    assert "light ahead is green" in text and "Weather: rain, night." in text
    assert "traffic light" not in captioner.semantic(_state(traffic_light="Unknown"))
    moving = captioner.motion(_state(), _state(lane_invasion=True))
    assert "It crosses a lane marking." in moving


def test_motion_caption_follows_speed_acceleration_lanes_and_lead(captioner):
    prev = _state(lane_index=1)
    text = captioner.motion(
        prev,
        _state(
            speed_mps=25.0,
            acceleration_mps2=1.2,
            lane_index=2,
            lead_distance_m=12.0,
            lead_closing_speed_mps=3.2,
        ),
    )
    assert text == (
        "The ego car drives very fast at 90 km/h, accelerating and changing lanes to the right. "
        "It closes in on the car ahead at 3 m/s."
    )
    prev = _state()
    assert "braking hard" in captioner.motion(prev, _state(acceleration_mps2=-4.0))
    assert "braking and" in captioner.motion(prev, _state(acceleration_mps2=-1.0))
    assert "holding its speed and keeping its lane" in captioner.motion(
        prev, _state(acceleration_mps2=0.1, lat_speed_mps=0.0)
    )
    assert "changing lanes to the left" in captioner.motion(
        _state(lane_index=1), _state(lane_index=0)
    )
    # Drifting toward a side with no lane is not a lane change.
    assert "drifting toward the left edge of the road" in captioner.motion(
        _state(lane_index=0), _state(lane_index=0, lat_speed_mps=-0.8)
    )
    assert "falls back from the car ahead at 2 m/s" in captioner.motion(
        prev, _state(lead_distance_m=20.0, lead_closing_speed_mps=-2.4)
    )
    assert "steady gap" in captioner.motion(
        prev, _state(lead_distance_m=20.0, lead_closing_speed_mps=0.1)
    )
    assert captioner.motion(prev, _state(speed_mps=0.0, acceleration_mps2=0.0)).startswith(
        "The ego car is standing still."
    )


def test_collision_is_mentioned(captioner):
    assert "It collides with another vehicle!" in captioner.motion(_state(), _state(collision=True))
    assert "collides" not in captioner.motion(_state(), _state(collision=False))


def test_captions_are_deterministic_and_distinct_states_give_distinct_captions(captioner):
    states = [synthetic_state(episode, step, 0.2) for episode in range(3) for step in range(6)]
    pairs = [
        (captioner.semantic(s), captioner.motion(p, s))
        for p, s in zip(states, states[1:], strict=False)
    ]
    again = SceneCaptioner(SceneConfig())
    assert pairs == [
        (again.semantic(s), again.motion(p, s)) for p, s in zip(states, states[1:], strict=False)
    ]
    assert len(set(pairs)) > 0.8 * len(pairs)
    # Each field that the caption reports changes the caption on its own.
    base = _state(
        lead_distance_m=30.0, lead_closing_speed_mps=0.0, acceleration_mps2=0.0, lat_speed_mps=0.0
    )
    variants = [
        base,
        _state(**{**base, "lane_index": 1}),
        _state(**{**base, "lead_distance_m": 60.0}),
        _state(**{**base, "lead_distance_m": None}),
        _state(**{**base, "neighbours_per_lane": [0, 3, 0]}),
        _state(**{**base, "speed_mps": 10.0}),
        _state(**{**base, "acceleration_mps2": 2.0}),
        _state(**{**base, "lead_closing_speed_mps": 2.0}),
        _state(**{**base, "collision": True}),
    ]
    captions = [captioner.caption([Step("k", v, base)])[0][:2] for v in variants]
    assert len(set(captions)) == len(variants)


def test_coarser_bins_share_captions():
    coarse = SceneCaptioner(SceneConfig(distance_step_m=10.0, speed_step_kmh=10.0))
    assert coarse.semantic(_state(lead_distance_m=31.0)) == coarse.semantic(
        _state(lead_distance_m=33.0)
    )
    assert "at 80 km/h" in coarse.motion(_state(), _state(speed_mps=22.9))


def test_motion_targets_follow_schema_order():
    assert list(STATE_FIELDS) == [name for name, _ in schema.MOTION_TARGETS]
    state = _state()
    expected = [
        state["speed_mps"],
        state["acceleration_mps2"],
        state["yaw_rate_radps"],
        state["lat_speed_mps"],
        state["lateral_offset_m"],
        state["heading_rad"],
    ]
    values = motion_targets(state)
    assert values.dtype == np.float32 and values.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(SemoreError, match="field 'yaw_rate_radps' is None: expected a number"):
        motion_targets(_state(yaw_rate_radps=None))


def test_captions_say_where_in_the_lane_and_toward_which_edge_the_car_drifts(captioner):
    def lane_words(**changes) -> str:
        return captioner.semantic(_state(lane_index=1, lanes_count=3, **changes)).split(". ")[0]

    edges = {"road_edge_left_m": 6.0, "road_edge_right_m": 6.0}
    assert lane_words(lateral_offset_m=0.2, **edges).endswith("middle lane of 3, centred")
    assert lane_words(lateral_offset_m=1.1, **edges).endswith("1 m right of the lane centre")
    assert lane_words(lateral_offset_m=-0.8, **edges).endswith("1 m left of the lane centre")
    near = lane_words(lateral_offset_m=1.9, road_edge_left_m=9.9, road_edge_right_m=1.2)
    assert near.endswith("near the right edge of the road")

    prev = _state(lane_index=2, lanes_count=3)
    drifting = _state(lane_index=2, lanes_count=3, lat_speed_mps=1.0, road_edge_right_m=1.3)
    assert "drifting toward the right edge of the road, 1.5 m away" in captioner.motion(
        prev, drifting
    )


def test_motion_targets_include_lateral_offset_and_heading_error():
    state = _state(lateral_offset_m=-0.7, heading_rad=0.05)
    values = dict(
        zip([name for name, _ in schema.MOTION_TARGETS], motion_targets(state), strict=True)
    )
    assert values["lateral_offset"] == pytest.approx(-0.7)
    assert values["heading_error"] == pytest.approx(0.05)


def test_caption_state_is_the_numbers_behind_the_captions():
    state = _state(lane_index=1, lanes_count=3, neighbours_per_lane=[2, 0, 1])
    values = dict(zip(schema.CAPTION_STATE_FIELDS, schema.caption_state(state), strict=True))
    assert values["cars_left_lane"] == 2 and values["cars_right_lane"] == 1
    assert values["lane_index"] == 1 and values["speed_mps"] == pytest.approx(state["speed_mps"])
    edge = schema.caption_state(_state(lane_index=0, neighbours_per_lane=[0, 3, 0]))
    assert edge[schema.CAPTION_STATE_FIELDS.index("cars_left_lane")] == -1  # no lane there
    older = {k: v for k, v in _state().items() if k != "lateral_offset_m"}
    assert np.isnan(
        schema.caption_state(older)[schema.CAPTION_STATE_FIELDS.index("lateral_offset_m")]
    )
