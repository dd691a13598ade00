"""The CARLA backend: the real ``carla`` client (0.9.x) behind :class:`DrivingEnv`.

The default scenario is DBC's Town04 highway. The world runs in synchronous mode with a
fixed time step, so one ``step`` is exactly one ``world.tick()``; the Traffic Manager (TM)
is synchronous too and re-seeded every episode. RGB cameras on the ego (yaw -120..120
degrees) are returned one by one (``yawm120`` ... ``yaw120``, left to right) and stitched
left to right into the ``rgb`` panorama (84x420 by default).

Conventions are CARLA's (left-handed, z up): yaw, yaw rate, steering and lateral speed
are positive to the right. Speeds and distances are measured in the frame of the ego's
lane (its waypoint's forward vector), as in DBC's reward ``v . u_highway * dt``: that is
progress along the road, the same quantity the highway backend rewards. ``lane_index`` 0
is the leftmost driving lane of the ego's direction of travel, counted by walking
``get_left_lane()`` over driving lanes with the same sign of OpenDRIVE ``lane_id``.

Failures: every ``RuntimeError`` of the client (time-outs, a lost connection, a crashed
server) becomes :class:`SimulatorConnectionError`; the caller then calls ``reconnect()``
and re-runs the in-flight episode with the same seed. Episodes terminate as in DBC, after
``collision_terminate_ticks`` consecutive ticks in collision (one contact only costs
reward), and are truncated at ``max_episode_steps``.
"""

from __future__ import annotations

import logging
import math
import queue
import random
from typing import Any

import numpy as np

from pipeline.errors import SemoreError
from pipeline.sim.base import (
    ACTION_DIM,
    RewardConfig,
    SimulatorConnectionError,
    StepResult,
    checked_action,
    driving_reward,
)
from pipeline.sim.carla_actors import (
    SensorEvents,
    attach_sensors,
    await_images,
    camera_name,
    spawn_traffic,
    spawn_transforms,
    stitch_frames,
)
from pipeline.sim.carla_server import CarlaServerProcess, connect_world, one_line
from pipeline.sim.carla_state import describe_weather, ego_state
from pipeline.sim.configs import CarlaConfig

log = logging.getLogger(__name__)


def import_carla() -> Any:
    """The ``carla`` module, imported on first use so this module loads without it."""
    try:
        import carla
    except ImportError:
        raise SemoreError(
            "the carla backend needs the CARLA client: pip install 'semore[carla]' (carla==0.9.16)"
        ) from None
    return carla


class CarlaEnv:
    """One ego vehicle in a synchronous CARLA world; see the module docstring."""

    action_dim = ACTION_DIM

    def __init__(self, cfg: CarlaConfig, reward: RewardConfig, host: str):
        self.cfg, self.reward_cfg = cfg, reward
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise SemoreError(f"carla host {host!r} is invalid: expected HOST:PORT")
        self.host, self.port = name, int(port)
        self.address = f"{self.host}:{self.port}"
        self.tm_port = self.port + cfg.tm_port_offset
        self._carla = import_carla()
        self._yaws_deg = sorted(float(y) for y in cfg.camera_yaws_deg)  # left to right
        cameras = [camera_name(y) for y in self._yaws_deg]
        if len(set(cameras)) != len(cameras):
            raise SemoreError(
                f"carla.camera_yaws_deg {cfg.camera_yaws_deg} gives duplicate camera names: "
                "expected yaws at least 1 degree apart"
            )
        # One camera is stored as rgb.png alone; several as cam_<name>.png plus the panorama.
        self.camera_names = ["rgb"] if len(cameras) == 1 else ["rgb", *cameras]
        self.image_shape = (cfg.image_height, cfg.image_width * len(cameras))
        self._server = (  # None: connect to a server someone else runs
            CarlaServerProcess(cfg.server_cmd, self.host, self.port, cfg.server_start_wait_s)
            if cfg.server_cmd
            else None
        )
        self._client = self._world = self._map = self._tm = None
        self._world_id: int | None = None
        self._original_settings = None
        # (world id, actor ids) of an episode cut off by a failure, removed on reconnect.
        self._stale: tuple[int | None, list[int]] = (None, [])
        self._closed = False
        self._forget_episode()
        if self._server is None:
            self._connect()
            return
        self._server.start()
        try:
            self._server.connect_when_ready(self._connect)
        except BaseException:
            self._server.stop()  # no orphaned server when the env cannot be built
            raise

    @property
    def step_duration_s(self) -> float:
        return self.cfg.fixed_delta_s

    # -- episode --------------------------------------------------------------------------

    def reset(self, seed: int) -> tuple[dict[str, np.ndarray], dict]:
        self._check_connected("reset")
        try:
            if self._destroy_actors():
                self._world.tick(self.cfg.timeout_s)  # let the removal land before respawning
            self._tm.set_random_device_seed(int(seed))
            self._spawn(random.Random(seed))
            frame, images = self._first_frame()
            self._events.pop(frame)  # contacts while the spawned cars settled do not count
            self._num_steps = 0
            self._weather = describe_weather(self._world.get_weather())
            state = self._state(impulse=0.0, crossed=False, steer=0.0, prev_lon_speed=None)
        except RuntimeError as err:
            raise self._lost("reset", err) from None
        return stitch_frames(images, self.camera_names), state

    def step(self, action: np.ndarray | None) -> StepResult:
        if self._num_steps is None:
            raise SemoreError("carla step() called before reset(seed): expected reset first")
        self._check_connected("step")
        expert = action is None
        if not expert:
            action = checked_action(action, "carla", ("steer", "throttle_brake"))
        cfg = self.cfg
        try:
            if expert != self._autopilot:
                self._ego.set_autopilot(expert, self.tm_port)
                self._autopilot = expert
            if not expert:
                steer, pedal = float(action[0]), float(action[1])
                self._ego.apply_control(
                    self._carla.VehicleControl(
                        throttle=max(pedal, 0.0), steer=steer, brake=max(-pedal, 0.0)
                    )
                )
            frame = self._world.tick(cfg.timeout_s)
            images = await_images(self._camera_queues, frame, cfg.timeout_s)
            if images is None:
                raise SimulatorConnectionError(
                    f"the CARLA server at {self.address} sent no complete set of camera images "
                    f"for frame {frame} within {cfg.timeout_s:g} s"
                )
            if expert:  # record what the autopilot really applied during this tick
                control = self._ego.get_control()
                action = np.array([control.steer, control.throttle - control.brake], np.float32)
            impulse, crossed = self._events.pop(frame)
            self._num_steps += 1
            state = self._state(impulse, crossed, float(action[0]), self._lon_speed_mps)
        except RuntimeError as err:
            raise self._lost(f"step {self._num_steps + 1}", err) from None
        distance_m = state["lon_speed_mps"] * cfg.fixed_delta_s
        self._collision_ticks = self._collision_ticks + 1 if impulse > 0 else 0
        terminated = 0 < cfg.collision_terminate_ticks <= self._collision_ticks
        return StepResult(
            frames=stitch_frames(images, self.camera_names),
            action=action.astype(np.float32),
            reward=driving_reward(self.reward_cfg, distance_m, impulse, float(action[0])),
            terminated=terminated,
            truncated=self._num_steps >= cfg.max_episode_steps and not terminated,
            state=state,
            distance_m=distance_m,
            info={"frame": int(frame)},
        )

    def _spawn(self, rng: random.Random) -> None:
        """The ego, the autopilot traffic and the ego's sensors, all chosen by ``rng``."""
        carla, cfg, world = self._carla, self.cfg, self._world
        library = world.get_blueprint_library()
        try:
            ego_bp = library.find(cfg.ego_blueprint)
        except (IndexError, KeyError, RuntimeError):
            raise SemoreError(
                f"carla.ego_blueprint {cfg.ego_blueprint!r} is not in the server's blueprint "
                "library: expected a vehicle id such as vehicle.audi.a2"
            ) from None
        ego_bp.set_attribute("role_name", "hero")
        ego_transform, traffic_transforms = spawn_transforms(self._carla, self._map, cfg, rng)
        self._ego = world.try_spawn_actor(ego_bp, ego_transform)
        if self._ego is None:
            loc = ego_transform.location
            raise SimulatorConnectionError(
                f"the CARLA server at {self.address} could not spawn the ego at "
                f"({loc.x:.1f}, {loc.y:.1f}): the spot is occupied"
            )
        self._vehicle_ids.append(self._ego.id)

        ids = spawn_traffic(carla, self._client, library, traffic_transforms, self.tm_port, rng)
        self._vehicle_ids.extend(ids)
        self._traffic = list(world.get_actors(ids)) if ids else []

        attach_sensors(
            carla,
            world,
            library,
            self._ego,
            cfg,
            self._yaws_deg,
            self._events,
            self._sensors,
            self._camera_queues,
        )

    # -- sensors --------------------------------------------------------------------------

    def _first_frame(self) -> tuple[int, list[np.ndarray]]:
        """Warm up, then tick until every camera delivered the current frame."""
        cfg = self.cfg
        for _ in range(cfg.reset_warmup_ticks):
            self._world.tick(cfg.timeout_s)
        # A freshly spawned camera may skip its first frames: wait briefly, then tick again.
        wait_s = min(1.0, cfg.timeout_s)
        for _ in range(max(1, math.ceil(cfg.timeout_s / wait_s))):
            frame = self._world.tick(cfg.timeout_s)
            images = await_images(self._camera_queues, frame, wait_s)
            if images is not None:
                return frame, images
        raise SimulatorConnectionError(
            f"the cameras on the CARLA server at {self.address} delivered no complete frame "
            f"within {cfg.timeout_s:g} s of reset"
        )

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> None:
        """Client, world, sync settings and TM; the world's own settings are kept the first
        time, so close() can restore them."""
        keep = self._original_settings is None
        link = connect_world(self._carla, self.cfg, self.host, self.port, self.tm_port, keep)
        if keep:
            self._original_settings = link.original_settings
        self._client, self._world, self._map = link.client, link.world, link.map
        self._tm, self._world_id = link.traffic_manager, link.world.id

    def expert_action(self) -> None:
        """Unknown before the tick: the Traffic Manager applies the autopilot's control in it."""
        return None

    def reconnect(self) -> None:
        """Re-create client, world and TM (restarting an own server that died or hangs),
        and destroy the in-flight episode's actors if the server kept them."""
        if self._closed:
            raise SemoreError("carla reconnect() after close(): expected a new CarlaEnv")
        if self._sensors or self._vehicle_ids:  # kept until a reconnect succeeds
            self._stale = (self._world_id, [s.id for s in self._sensors] + self._vehicle_ids)
        for sensor in self._sensors:
            _quietly(sensor.stop)
        self._forget_episode()
        self._client = self._world = self._map = self._tm = None
        server = self._server
        if server is not None and server.exited():
            log.warning("the CARLA server of carla.server_cmd exited; restarting it")
            server.restart(self._connect)
        else:
            try:
                self._connect()
            except SimulatorConnectionError:
                if server is None or server.process is None:  # none of ours is running
                    raise
                log.warning("the CARLA server of carla.server_cmd does not answer; restarting it")
                server.restart(self._connect)
        stale_world_id, stale_ids = self._stale
        self._stale = (None, [])
        if stale_ids and stale_world_id == self._world_id:  # the server kept them: remove
            command = self._carla.command
            try:
                self._client.apply_batch_sync([command.DestroyActor(i) for i in stale_ids], False)
            except RuntimeError as err:
                raise self._lost("reconnect", err) from None

    def close(self) -> None:
        """Destroy actors (sensors stopped first), restore settings, release TM sync."""
        if self._closed:
            return
        self._closed = True
        if self._world is not None:
            try:
                self._destroy_actors()
                if self._original_settings is not None:
                    self._world.apply_settings(self._original_settings)
                self._tm.set_synchronous_mode(False)
            except RuntimeError as err:
                log.warning(
                    "could not clean up the CARLA server at %s (%s): its world may stay "
                    "synchronous until restarted",
                    self.address,
                    one_line(err),
                )
        self._client = self._world = self._map = self._tm = None
        if self._server is not None:
            self._server.stop()

    def _destroy_actors(self) -> int:
        """Stop and destroy this episode's sensors, then its vehicles; returns the count."""
        for sensor in self._sensors:
            sensor.stop()
        ids = [s.id for s in self._sensors] + self._vehicle_ids
        if ids:
            command = self._carla.command
            self._client.apply_batch_sync([command.DestroyActor(i) for i in ids], False)
        self._forget_episode()
        return len(ids)

    def _forget_episode(self) -> None:
        self._ego = None
        self._traffic: list = []
        self._sensors: list = []  # cameras left to right, then collision, lane invasion
        self._vehicle_ids: list[int] = []  # ego first
        self._camera_queues: list[queue.Queue] = []
        self._events = SensorEvents()
        self._autopilot = False
        self._num_steps: int | None = None
        self._lon_speed_mps = 0.0
        self._collision_ticks = 0
        self._weather: str | None = None

    def _state(
        self, impulse: float, crossed: bool, steer: float, prev_lon_speed: float | None
    ) -> dict:
        """The ego's privileged state (see :func:`ego_state`); remembers its lon speed."""
        state = ego_state(
            self._carla,
            self._map,
            self._ego,
            self._traffic,
            impulse=impulse,
            crossed=crossed,
            steer=steer,
            prev_lon_speed_mps=prev_lon_speed,
            step_duration_s=self.cfg.fixed_delta_s,
            num_steps=self._num_steps,
            weather=self._weather,
        )
        self._lon_speed_mps = state["lon_speed_mps"]
        return state

    def _check_connected(self, what: str) -> None:
        if self._closed:
            raise SemoreError(f"carla {what}() after close(): expected a new CarlaEnv")
        if self._world is None:
            raise SimulatorConnectionError(
                f"not connected to the CARLA server at {self.address}: expected reconnect() to succeed"
            )

    def _lost(self, what: str, err: RuntimeError) -> SimulatorConnectionError:
        return SimulatorConnectionError(
            f"the CARLA server at {self.address} failed during {what}: {one_line(err)}"
        )


def _quietly(fn: Any) -> None:
    try:
        fn()
    except RuntimeError as err:
        log.debug("ignored during CARLA clean-up: %s", one_line(err))
