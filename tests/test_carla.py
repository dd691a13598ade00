"""The CARLA backend against tests/fake_carla.py, plus the real client against no server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SemoreError
from pipeline.sim import EnvConfig, make_env
from pipeline.sim.base import RewardConfig, SimulatorConnectionError
from pipeline.sim.carla_env import CarlaEnv
from pipeline.sim.configs import CarlaConfig
from tests import fake_carla

PORT = 2000
TM_PORT = PORT + 6000
CAMERAS = ["yawm120", "yawm060", "yaw000", "yaw060", "yaw120"]
STATE_KEYS = {
    "speed_mps",
    "lon_speed_mps",
    "lat_speed_mps",
    "acceleration_mps2",
    "heading_rad",
    "yaw_rate_radps",
    "position_m",
    "lane_index",
    "lanes_count",
    "lead_distance_m",
    "lead_closing_speed_mps",
    "neighbours_per_lane",
    "lead_present",
    "collision",
    "collision_impulse",
    "on_road",
    "steer",
    "time_s",
    "traffic_light",
    "weather",
    "lane_invasion",
    "lateral_offset_m",
    "road_edge_left_m",
    "road_edge_right_m",
}


@pytest.fixture
def server(monkeypatch):
    fake_carla.stop_all()
    monkeypatch.setitem(sys.modules, "carla", fake_carla)
    yield fake_carla.start_server(PORT)
    fake_carla.stop_all()


@pytest.fixture
def make(server):
    """Build CarlaEnvs on small images (16x16 per camera) and close them afterwards."""
    envs = []

    def build(**overrides) -> CarlaEnv:
        fields = dict(
            hosts=[f"localhost:{PORT}"],
            image_height=16,
            image_width=16,
            num_vehicles=6,
            timeout_s=0.5,
            reset_warmup_ticks=2,
        )
        cfg = CarlaConfig(**{**fields, **overrides})
        envs.append(CarlaEnv(cfg, RewardConfig(), host=cfg.hosts[0]))
        return envs[-1]

    yield build
    for env in envs:
        env.close()


def test_missing_client_is_a_one_line_error(monkeypatch):
    code = "import sys; sys.modules['carla'] = None; import pipeline.sim.carla_env"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)  # imports without carla
    monkeypatch.setitem(sys.modules, "carla", None)  # makes `import carla` fail
    with pytest.raises(SemoreError, match=r"pip install 'semore\[carla\]' \(carla==0.9.16\)"):
        CarlaEnv(CarlaConfig(), RewardConfig(), host="localhost:2000")


def test_sync_settings_seeded_tm_and_restore_on_close(server, make):
    env = make()
    assert server.settings.synchronous_mode and server.settings.fixed_delta_seconds == 0.05
    tm = server.traffic_managers[TM_PORT]
    assert tm.synchronous and tm.speed_difference_pct == 30.0
    env.reset(seed=7)
    assert tm.seed == 7
    env.reset(seed=8)
    assert tm.seed == 8
    env.close()
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None
    assert not tm.synchronous and server.actors == {}
    env.close()  # idempotent
    with pytest.raises(SemoreError, match="after close"):
        env.reset(seed=0)


def test_loads_the_town_only_when_another_map_is_up(server, make):
    make()
    assert server.loaded_maps == []
    server.town = "Town01"
    make()
    assert server.loaded_maps == ["Town04"]
    with pytest.raises(SemoreError, match="carla.town 'Town99' cannot be loaded"):
        make(town="Town99")


def test_spawns_traffic_and_sensors_and_destroys_them(server, make):
    env = make()
    env.reset(seed=1)
    hero = server.hero()
    assert hero.type_id == "vehicle.audi.a2" and hero.autopilot_port is None
    assert hero.location.x == pytest.approx(100.0) and 0 < hero.location.y < 14
    traffic = [v for v in server.vehicles() if v is not hero]
    assert len(traffic) == 6 and all(v.autopilot_port == TM_PORT for v in traffic)
    assert all(v.type_id != "vehicle.kawasaki.ninja" for v in traffic)  # four wheels only
    sensors = server.sensors()
    assert all(s.parent == hero.id for s in sensors)
    cameras = sorted((s for s in sensors if s.type_id == "sensor.camera.rgb"), key=lambda s: s.id)
    assert [c.yaw for c in cameras] == [-120.0, -60.0, 0.0, 60.0, 120.0]
    assert {(c.attributes["image_size_x"], c.attributes["fov"]) for c in cameras} == {
        ("16", "60.0")
    }
    assert sorted(s.type_id for s in sensors if s not in cameras) == [
        "sensor.other.collision",
        "sensor.other.lane_invasion",
    ]
    first_ids = set(server.actors)
    env.reset(seed=2)
    assert len(server.vehicles()) == 7 and len(server.sensors()) == 7
    assert not first_ids & set(server.actors)
    env.close()
    assert server.actors == {}


def test_map_spawn_points_and_bad_spawn_settings(server, make):
    env = make(spawn_road_id=None)
    env.reset(seed=5)
    assert server.hero().location.x in range(20, 1000, 40) and len(server.vehicles()) == 7
    with pytest.raises(SemoreError, match="road 99 lane -2 at s=100 m does not exist"):
        make(spawn_road_id=99, spawn_lane_ids=[-2]).reset(seed=0)
    with pytest.raises(SemoreError, match="carla.ego_blueprint 'vehicle.nope'"):
        make(ego_blueprint="vehicle.nope").reset(seed=0)


def test_frames_are_five_cameras_and_their_panorama(server, make):
    env = make()
    frames, _ = env.reset(seed=3)
    assert env.camera_names == ["rgb", *CAMERAS]
    assert set(frames) == set(env.camera_names)
    assert env.image_shape == (16, 80) and frames["rgb"].shape == (16, 80, 3)
    assert all(frames[c].shape == (16, 16, 3) and frames[c].dtype == np.uint8 for c in CAMERAS)
    np.testing.assert_array_equal(frames["rgb"], np.concatenate([frames[c] for c in CAMERAS], 1))
    # BGRA -> RGB: the fake paints the sky (B, G, R) = (t, 180 - t//2, 60 + t//3).
    tint = zlib.crc32(b"0.0") % 200
    assert frames["yaw000"][0, 0].tolist() == [60 + tint // 3, 180 - tint // 2, tint]
    assert len({frames[c].tobytes() for c in CAMERAS}) == 5
    step_frames = env.step(None).frames
    assert set(step_frames) == set(env.camera_names) and step_frames["rgb"].shape == (16, 80, 3)


def test_default_size_is_84x420_and_one_camera_is_rgb_only(server, make):
    env = make(image_height=84, image_width=84, num_vehicles=0)
    frames, _ = env.reset(seed=0)
    assert env.image_shape == (84, 420) and frames["rgb"].shape == (84, 420, 3)
    env.close()  # one ego per world: a second env would find the spawn spot taken
    single = make(camera_yaws_deg=[0.0], num_vehicles=0)
    frames, _ = single.reset(seed=0)
    assert single.camera_names == ["rgb"] and list(frames) == ["rgb"]


def test_same_seed_same_episode_start(server, make):
    env = make()
    frames_a, state_a = env.reset(seed=3)
    for _ in range(3):
        env.step(None)
    frames_b, state_b = env.reset(seed=3)
    assert state_a == state_b
    assert all(np.array_equal(frames_a[k], frames_b[k]) for k in frames_a)
    layout = sorted((v.type_id, v.location.x, v.location.y) for v in server.vehicles())
    env.reset(seed=4)
    assert sorted((v.type_id, v.location.x, v.location.y) for v in server.vehicles()) != layout


def test_sensor_data_arriving_after_the_tick_is_matched_by_frame(server, make):
    env = make()
    in_tick = [env.reset(seed=5)[0]] + [env.step(None).frames for _ in range(3)]
    server.sensor_delay_s = 0.02  # stale warm-up images now arrive while later frames wait
    late = [env.reset(seed=5)[0]] + [env.step(None).frames for _ in range(3)]
    for a, b in zip(in_tick, late, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_expert_step_records_the_autopilot_control(server, make):
    env = make()
    env.reset(seed=0)
    result = env.step(None)
    hero = server.hero()
    assert hero.autopilot_port == TM_PORT
    control = hero.control
    expected = np.array([control.steer, control.throttle - control.brake], np.float32)
    np.testing.assert_array_equal(result.action, expected)
    assert result.action.dtype == np.float32 and result.action[1] > 0  # speeding up from rest
    assert result.state["steer"] == pytest.approx(float(control.steer))


def test_random_action_is_applied_as_vehicle_control(server, make):
    env = make()
    env.reset(seed=0)
    env.step(None)
    result = env.step(np.array([0.25, -0.5]))
    hero = server.hero()
    assert hero.autopilot_port is None
    assert (hero.control.steer, hero.control.throttle, hero.control.brake) == (0.25, 0.0, 0.5)
    np.testing.assert_array_equal(result.action, np.float32([0.25, -0.5]))
    result = env.step([2.0, 0.7])  # clipped to [-1, 1]
    assert (hero.control.steer, hero.control.brake) == (1.0, 0.0)
    assert hero.control.throttle == pytest.approx(0.7)
    np.testing.assert_array_equal(result.action, np.float32([1.0, 0.7]))
    env.step(None)
    assert hero.autopilot_port == TM_PORT
    with pytest.raises(SemoreError, match=r"expected 2 finite values \[steer, throttle_brake\]"):
        env.step([0.1, 0.2, 0.3])


def test_reward_is_progress_minus_impulse_and_steer(server, make):
    env = make()
    env.reset(seed=0)
    for _ in range(5):
        env.step([0.0, 1.0])
    server.inject_collision(2500.0)
    result = env.step([0.2, 0.5])
    hero = server.hero()
    lon_speed = hero.speed * np.cos(np.radians(hero.yaw))  # the road runs along +x
    assert result.state["lon_speed_mps"] == pytest.approx(lon_speed)
    assert result.distance_m == pytest.approx(lon_speed * 0.05) and result.distance_m > 0
    assert result.state["collision"] and result.state["collision_impulse"] == pytest.approx(2500.0)
    assert result.reward == pytest.approx(lon_speed * 0.05 - 1e-4 * 2500.0 - 0.2, rel=1e-5)
    assert not result.terminated
    after = env.step([0.0, 0.0])
    assert not after.state["collision"] and after.state["collision_impulse"] == 0.0
    assert after.reward == pytest.approx(after.distance_m)


def test_terminates_after_consecutive_collisions_and_truncates(server, make):
    env = make(collision_terminate_ticks=3, max_episode_steps=6)
    env.reset(seed=0)
    flags = []
    for impulse in (10.0, 0.0, 10.0, 10.0, 10.0):
        if impulse:
            server.inject_collision(impulse)
        result = env.step(None)
        flags.append((result.terminated, result.truncated))
    assert flags == [(False, False)] * 4 + [(True, False)]
    env.reset(seed=0)
    truncated = [env.step(None).truncated for _ in range(6)]
    assert truncated == [False] * 5 + [True]


def test_state_keys_lanes_and_extras(server, make):
    env = make()
    _, state = env.reset(seed=2)
    assert set(state) == STATE_KEYS
    json.dumps(state)
    hero = server.hero()
    assert state["lane_index"] == int(hero.location.y // 3.5)  # lane -1 (leftmost) is index 0
    assert state["lanes_count"] == 4  # the shoulder and the other carriageway do not count
    assert state["on_road"] and state["weather"] == "clear, day"
    assert state["traffic_light"] == "none" and not state["lane_invasion"]
    assert state["time_s"] == 0.0 and state["acceleration_mps2"] == 0.0
    # lane-relative pose: offset from the lane centre (> 0 right), distances to the road edges
    offset = hero.location.y - (state["lane_index"] + 0.5) * 3.5
    assert state["lateral_offset_m"] == pytest.approx(offset, abs=1e-6)
    assert state["road_edge_left_m"] == pytest.approx(hero.location.y, abs=1e-6)
    assert state["road_edge_right_m"] == pytest.approx(4 * 3.5 - hero.location.y, abs=1e-6)
    server.traffic_light = fake_carla.TrafficLightState.Red
    server.weather = fake_carla.WeatherParameters.HardRainNight
    env.step(None)
    state = env.step(None).state
    assert state["traffic_light"] == "red" and state["time_s"] == pytest.approx(0.1)
    assert env.reset(seed=2)[1]["weather"] == "cloudy, heavy rain, night"


def test_lead_and_neighbours_match_the_world(server, make):
    env = make(num_vehicles=30)
    env.reset(seed=9)
    for _ in range(3):
        env.step(None)
    state = env.step(None).state
    hero = server.hero()
    per_lane, lead = [0, 0, 0, 0], None
    for other in server.vehicles():
        dx = other.location.x - hero.location.x
        if other is hero or abs(dx) > 50.0:
            continue
        lane = int(other.location.y // 3.5)
        per_lane[lane] += 1
        gap = dx - hero.half_length - other.half_length
        if lane == state["lane_index"] and dx > 0 and (lead is None or gap < lead):
            lead = gap
    assert state["neighbours_per_lane"] == per_lane and sum(per_lane) > 0
    assert state["lead_present"] == (lead is not None)
    assert state["lead_distance_m"] == (100.0 if lead is None else pytest.approx(lead))


def test_lane_invasion_is_reported(server, make):
    env = make(num_vehicles=0)
    env.reset(seed=0)
    crossed = [env.step([0.4, 1.0]).state["lane_invasion"] for _ in range(40)]
    assert any(crossed)


@pytest.mark.parametrize("crash", [False, True])
def test_server_drop_then_reconnect_reruns_the_episode(server, make, crash):
    env = make()
    frames0, state0 = env.reset(seed=11)
    env.step(None)
    server.drop_after_ticks, server.drop_crashes = 2, crash
    env.step(None)
    env.step(None)
    with pytest.raises(
        SimulatorConnectionError, match=f"localhost:{PORT} failed during step 4: time-out"
    ):
        env.step(None)
    server.fail_get_world = 1
    with pytest.raises(
        SimulatorConnectionError, match=f"cannot reach the CARLA server at localhost:{PORT}"
    ):
        env.reconnect()
    env.reconnect()
    assert server.settings.synchronous_mode and server.traffic_managers[TM_PORT].synchronous
    assert server.actors == {}  # a surviving world's in-flight actors were destroyed
    frames1, state1 = env.reset(seed=11)
    assert state1 == state0
    assert all(np.array_equal(frames0[k], frames1[k]) for k in frames0)
    assert len(server.vehicles()) == 7 and len(server.sensors()) == 7


def test_missing_camera_images_time_out(server, make):
    env = make(timeout_s=0.2)
    env.reset(seed=0)
    server.silent_cameras = True
    with pytest.raises(SimulatorConnectionError, match="no complete set of camera images"):
        env.step(None)
    with pytest.raises(SimulatorConnectionError, match="delivered no complete frame"):
        env.reset(seed=0)


def test_make_env_picks_the_worker_host(server, make):
    fake_carla.start_server(PORT + 2)
    cfg = CarlaConfig(hosts=[f"localhost:{PORT}", f"localhost:{PORT + 2}"], num_vehicles=0)
    env = make_env(EnvConfig(backend="carla", carla=cfg), worker=3)
    try:
        assert isinstance(env, CarlaEnv) and env.address == f"localhost:{PORT + 2}"
        assert env.tm_port == PORT + 2 + 6000
    finally:
        env.close()


SLEEPER = f"{sys.executable} -c 'import time; time.sleep(60)' --port {{port}}"


def test_server_cmd_is_started_restarted_and_stopped(server, make):
    env = make(server_cmd=SLEEPER, server_start_wait_s=5.0)
    first = env._server.process
    assert first.poll() is None and first.args[-1] == str(PORT)
    env.reset(seed=0)
    os.killpg(first.pid, signal.SIGKILL)  # the server crashes
    first.wait()
    server.drop(crash=True)
    with pytest.raises(SimulatorConnectionError):
        env.step(None)
    env.reconnect()
    second = env._server.process
    assert second.pid != first.pid and second.poll() is None
    env.reset(seed=0)
    env.close()
    assert second.poll() is not None


def test_server_cmd_that_exits_is_a_clear_error(server, make):
    with pytest.raises(SemoreError, match="carla.server_cmd exited with code 1"):
        make(hosts=[f"localhost:{PORT + 1}"], server_cmd="false {port}", server_start_wait_s=5.0)


def test_real_client_without_server_is_a_connection_error():
    import carla  # the real client: no fake is installed for this test

    assert not hasattr(carla, "FakeServer") and "site-packages" in carla.__file__
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = CarlaConfig(hosts=[f"127.0.0.1:{port}"], timeout_s=1.0)
    with pytest.raises(SimulatorConnectionError) as err:
        CarlaEnv(cfg, RewardConfig(), host=cfg.hosts[0])
    message = str(err.value)
    assert message.startswith(f"cannot reach the CARLA server at 127.0.0.1:{port} within 1 s")
    assert f"-carla-rpc-port={port}" in message and "\n" not in message


def test_collect_reruns_the_episode_cut_by_a_server_drop(server, tmp_path):
    from pipeline.collect.run import CollectConfig, collect
    from pipeline.data.shards import iter_shard

    carla_cfg = CarlaConfig(
        hosts=[f"localhost:{PORT}"],
        image_height=16,
        image_width=16,
        num_vehicles=4,
        timeout_s=0.5,
        reset_warmup_ticks=2,
        max_episode_steps=5,
    )
    cfg = CollectConfig(
        run="cl", backend="carla", episodes=2, episodes_per_shard=2, carla=carla_cfg
    )
    collect(cfg, tmp_path / "clean")
    # Episode 0 takes 3 + 5 ticks, episode 1 starts with 1 + 3: drop at its 4th step.
    server.drop_after_ticks = 8 + 4 + 3
    collect(cfg, tmp_path / "dropped")
    assert server.drop_after_ticks is None  # the drop happened
    clean = list(iter_shard(tmp_path / "clean" / "raw" / "raw-000000.tar", decode=False))
    dropped = list(iter_shard(tmp_path / "dropped" / "raw" / "raw-000000.tar", decode=False))
    assert [s["__key__"] for s in dropped] == [
        f"cl_00_{e:06d}_{t:05d}" for e in (0, 1) for t in range(5)
    ]
    assert {"rgb.png", "cam_yawm120.png", "cam_yaw120.png", "state.json"} <= set(dropped[0])
    assert dropped == clean


def _straight_xodr() -> str:
    """OpenDRIVE of the fake's road 45: lanes 4..1 one way, -1..-4 and shoulder -5 the other."""

    def lane(i: int, kind: str = "driving", width_m: float = 3.5) -> str:
        return (
            f'<lane id="{i}" type="{kind}" level="false"><link/>'
            f'<width sOffset="0" a="{width_m}" b="0" c="0" d="0"/></lane>'
        )

    right = "".join(lane(i) for i in (-1, -2, -3, -4)) + lane(-5, "shoulder", 3.0)
    return (
        '<?xml version="1.0" standalone="yes"?><OpenDRIVE>'
        '<header revMajor="1" revMinor="4" name="" version="1" north="0" south="0" east="0" west="0"/>'
        '<road name="r" length="500" id="45" junction="-1"><link/>'
        '<planView><geometry s="0" x="0" y="0" hdg="0" length="500"><line/></geometry></planView>'
        '<elevationProfile/><lateralProfile/><lanes><laneSection s="0">'
        f"<left>{''.join(lane(i) for i in (4, 3, 2, 1))}</left>"
        '<center><lane id="0" type="none" level="false"><link/></lane></center>'
        f"<right>{right}</right></laneSection></lanes></road></OpenDRIVE>"
    )


def test_lane_geometry_and_counting_match_a_real_carla_map():
    import carla  # the real client builds maps from OpenDRIVE without a server

    from pipeline.sim.carla_state import _lanes_beside

    real, fake = carla.Map("Straight", _straight_xodr()), fake_carla.Map("Straight")
    for lane_id in (-1, -2, -3, -4, 1, 2, 3, 4):
        real_wp = real.get_waypoint_xodr(45, lane_id, 100.0)
        fake_wp = fake.get_waypoint_xodr(45, lane_id, 100.0)
        for wp in (real_wp, fake_wp):
            # Project the lane centre back, as the backend does for vehicles.
            driving = type(wp.lane_type).Driving
            wp_map = real if wp is real_wp else fake
            projected = wp_map.get_waypoint(
                wp.transform.location, project_to_road=True, lane_type=driving
            )
            assert projected.lane_id == lane_id
        real_loc, fake_loc = real_wp.transform.location, fake_wp.transform.location
        assert (fake_loc.x, fake_loc.y) == pytest.approx((real_loc.x, real_loc.y))
        assert fake_wp.transform.rotation.yaw % 360 == pytest.approx(
            real_wp.transform.rotation.yaw % 360
        )
        for side in ("get_left_lane", "get_right_lane"):
            assert _lanes_beside(fake_wp, side, fake_carla.LaneType.Driving) == _lanes_beside(
                real_wp, side, carla.LaneType.Driving
            )
    assert (
        _lanes_beside(
            real.get_waypoint_xodr(45, -2, 100.0), "get_left_lane", carla.LaneType.Driving
        )
        == 1
    )
    off_road = carla.Location(x=100.0, y=40.0)
    assert (
        real.get_waypoint(off_road, project_to_road=False, lane_type=carla.LaneType.Driving) is None
    )
    assert fake.get_waypoint(off_road, project_to_road=False) is None
    assert (
        real.get_waypoint_xodr(99, -1, 10.0) is None
        and fake.get_waypoint_xodr(99, -1, 10.0) is None
    )


def test_fake_value_types_behave_like_the_real_ones():
    import carla

    for mod in (carla, fake_carla):
        control = mod.VehicleControl(throttle=0.7, steer=0.25, brake=0.5)
        assert (control.throttle, control.steer, control.brake) == (
            float(np.float32(0.7)),
            0.25,
            0.5,
        )
        assert mod.WorldSettings().fixed_delta_seconds is None
        assert not mod.WorldSettings().synchronous_mode
        right = mod.Rotation(yaw=90.0).get_right_vector()  # left-handed: +90 faces +y
        forward = mod.Transform(mod.Location(), mod.Rotation(yaw=90.0)).get_forward_vector()
        assert (round(forward.x, 6), round(forward.y, 6)) == (0.0, 1.0)
        assert (round(right.x, 6), round(right.y, 6)) == (-1.0, 0.0)
        noon = mod.WeatherParameters.ClearNoon
        assert (noon.cloudiness, noon.precipitation, noon.fog_density) == (5.0, 0.0, 2.0)
        assert noon.sun_altitude_angle == 45.0
        assert mod.TrafficLightState.Red.name == "Red" and mod.command.FutureActor == 0


def test_the_perturbed_policy_is_refused_on_carla(server, make):
    from pipeline.sim.configs import PolicyConfig
    from pipeline.sim.policies import CollectionPolicy

    env = make()
    env.reset(seed=0)
    policy = CollectionPolicy(PolicyConfig(name="perturbed"), env.action_dim)
    with pytest.raises(SemoreError, match="policy perturbed needs the expert's action"):
        policy.act(env)
