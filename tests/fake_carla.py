"""An in-process stand-in for the ``carla`` 0.9.16 client: exactly the API CarlaEnv uses.

Use: ``server = fake_carla.start_server(2000)`` then
``monkeypatch.setitem(sys.modules, "carla", fake_carla)``. Names and signatures follow
the real module; errors are ``RuntimeError`` with the real client's wording.

The world of every server: a straight two-way highway along +x (OpenDRIVE road 45).
Lanes -1..-4 drive toward +x at y = 1.75 .. 12.25 (CARLA is left-handed: +y is the right
of +x, so lane -1 is the leftmost), a shoulder lane -5 lies right of them, lanes 1..4 drive
toward -x at negative y. Vehicles are boxes with a simple longitudinal model and
bicycle-like yaw; the Traffic Manager's autopilot keeps the lane at the speed limit less
``global_percentage_speed_difference`` and adds steering noise from its seeded generator.
Cameras render a sky coloured by mount yaw, a road band that changes with the camera's x,
and other vehicles as boxes in their ``color``. Sensor callbacks run inside ``tick()``
(the real client calls them from its own threads, slightly after the tick).

Fault injection, on the :class:`FakeServer`: ``drop_after_ticks`` (the tick after that
many more raises the time-out error; with ``drop_crashes`` the world is also wiped, as a
restarted server), ``fail_get_world`` (the next N ``get_world`` calls time out),
``silent_cameras``, ``inject_collision(impulse)`` and ``traffic_light``.
"""

from __future__ import annotations

import copy
import enum
import fnmatch
import math
import random
import threading
import types
import zlib

import numpy as np

LANE_WIDTH_M = 3.5
SPEED_LIMIT_MPS = 25.0  # 90 km/h, Town04's highway limit
ROAD_ID = 45
_SERVERS: dict[int, FakeServer] = {}


def start_server(port: int = 2000, town: str = "Town04") -> FakeServer:
    """Register a running fake server on ``port`` (replacing any previous one)."""
    _SERVERS[port] = FakeServer(port, town)
    return _SERVERS[port]


def stop_all() -> None:
    _SERVERS.clear()


def _timeout(host: str, port: int, timeout_s: float) -> RuntimeError:
    return RuntimeError(
        f"time-out of {int(timeout_s * 1000)}ms while waiting for the simulator, make sure the "
        f"simulator is ready and connected to {host}:{port}"
    )


# -- geometry ------------------------------------------------------------------------------


class Vector3D:
    def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0):
        self.x, self.y, self.z = float(x), float(y), float(z)

    def __sub__(self, other: Vector3D) -> Vector3D:
        return Vector3D(self.x - other.x, self.y - other.y, self.z - other.z)

    def __add__(self, other: Vector3D) -> Vector3D:
        return type(self)(self.x + other.x, self.y + other.y, self.z + other.z)

    def __mul__(self, k: float) -> Vector3D:
        return type(self)(self.x * k, self.y * k, self.z * k)

    def length(self) -> float:
        return math.sqrt(self.x**2 + self.y**2 + self.z**2)

    def dot(self, other: Vector3D) -> float:
        return self.x * other.x + self.y * other.y + self.z * other.z

    def __repr__(self) -> str:
        return f"{type(self).__name__}(x={self.x:.6f}, y={self.y:.6f}, z={self.z:.6f})"


class Location(Vector3D):
    def distance(self, other: Location) -> float:
        return (self - other).length()


class Rotation:
    def __init__(self, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0):
        self.pitch, self.yaw, self.roll = float(pitch), float(yaw), float(roll)

    def get_forward_vector(self) -> Vector3D:
        yaw = math.radians(self.yaw)
        return Vector3D(math.cos(yaw), math.sin(yaw), 0.0)

    def get_right_vector(self) -> Vector3D:
        yaw = math.radians(self.yaw)
        return Vector3D(-math.sin(yaw), math.cos(yaw), 0.0)


class Transform:
    def __init__(self, location: Location | None = None, rotation: Rotation | None = None):
        self.location = location if location is not None else Location()
        self.rotation = rotation if rotation is not None else Rotation()

    def get_forward_vector(self) -> Vector3D:
        return self.rotation.get_forward_vector()

    def get_right_vector(self) -> Vector3D:
        return self.rotation.get_right_vector()


class BoundingBox:
    def __init__(self, location: Location, extent: Vector3D):
        self.location, self.extent = location, extent


# -- plain value types ---------------------------------------------------------------------


class WorldSettings:
    def __init__(
        self,
        synchronous_mode: bool = False,
        no_rendering_mode: bool = False,
        fixed_delta_seconds: float | None = None,
        substepping: bool = True,
        max_substep_delta_time: float = 0.01,
        max_substeps: int = 10,
    ):
        self.synchronous_mode = synchronous_mode
        self.no_rendering_mode = no_rendering_mode
        self.fixed_delta_seconds = fixed_delta_seconds
        self.substepping = substepping
        self.max_substep_delta_time = max_substep_delta_time
        self.max_substeps = max_substeps


def _f32(value: float) -> float:
    return float(np.float32(value))  # the real client stores controls as C++ floats


class VehicleControl:
    def __init__(
        self,
        throttle: float = 0.0,
        steer: float = 0.0,
        brake: float = 0.0,
        hand_brake: bool = False,
        reverse: bool = False,
        manual_gear_shift: bool = False,
        gear: int = 0,
    ):
        self.throttle, self.steer, self.brake = _f32(throttle), _f32(steer), _f32(brake)
        self.hand_brake, self.reverse = hand_brake, reverse
        self.manual_gear_shift, self.gear = manual_gear_shift, gear


class WeatherParameters:
    def __init__(
        self,
        cloudiness: float = 0.0,
        precipitation: float = 0.0,
        precipitation_deposits: float = 0.0,
        wind_intensity: float = 0.0,
        sun_azimuth_angle: float = 0.0,
        sun_altitude_angle: float = 0.0,
        fog_density: float = 0.0,
        fog_distance: float = 0.0,
        wetness: float = 0.0,
    ):
        self.cloudiness, self.precipitation = cloudiness, precipitation
        self.precipitation_deposits, self.wind_intensity = precipitation_deposits, wind_intensity
        self.sun_azimuth_angle, self.sun_altitude_angle = sun_azimuth_angle, sun_altitude_angle
        self.fog_density, self.fog_distance, self.wetness = fog_density, fog_distance, wetness


WeatherParameters.ClearNoon = WeatherParameters(
    cloudiness=5.0,
    wind_intensity=10.0,
    sun_azimuth_angle=-1.0,
    sun_altitude_angle=45.0,
    fog_density=2.0,
    fog_distance=0.75,
)
WeatherParameters.HardRainNight = WeatherParameters(
    cloudiness=100.0, precipitation=100.0, sun_altitude_angle=-90.0, fog_density=7.0
)


class TrafficLightState(enum.IntEnum):
    Red = 0
    Yellow = 1
    Green = 2
    Off = 3
    Unknown = 4


class LaneType(enum.IntEnum):
    NONE = 1
    Driving = 2
    Shoulder = 8
    Any = -2


class AttachmentType(enum.IntEnum):
    Rigid = 0


# -- blueprints ----------------------------------------------------------------------------


class ActorAttribute:
    def __init__(self, id: str, value: str, recommended_values: list[str] | None = None):
        self.id, self._value = id, str(value)
        self.recommended_values = list(recommended_values or [])
        self.is_modifiable = True

    def as_int(self) -> int:
        return int(self._value)

    def as_float(self) -> float:
        return float(self._value)

    def as_str(self) -> str:
        return self._value

    def __str__(self) -> str:
        return self._value


class ActorBlueprint:
    def __init__(self, id: str, attributes: dict[str, ActorAttribute]):
        self.id, self._attributes = id, attributes
        self.tags = id.split(".")

    def has_attribute(self, id: str) -> bool:
        return id in self._attributes

    def get_attribute(self, id: str) -> ActorAttribute:
        if id not in self._attributes:
            raise IndexError(f"No such attribute: {id}")
        return self._attributes[id]

    def set_attribute(self, id: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("set_attribute() value must be a str")  # Boost.Python refuses others
        self.get_attribute(id)._value = value


class BlueprintLibrary:
    def __init__(self, blueprints: list[ActorBlueprint]):
        self._blueprints = blueprints

    def find(self, id: str) -> ActorBlueprint:
        for bp in self._blueprints:
            if bp.id == id:
                return copy.deepcopy(bp)
        raise IndexError(f"blueprint '{id}' not found")

    def filter(self, wildcard_pattern: str) -> BlueprintLibrary:
        return BlueprintLibrary(
            [
                copy.deepcopy(bp)
                for bp in self._blueprints
                if fnmatch.fnmatch(bp.id, wildcard_pattern)
            ]
        )

    def __iter__(self):
        return iter(self._blueprints)

    def __len__(self) -> int:
        return len(self._blueprints)

    def __getitem__(self, index: int) -> ActorBlueprint:
        return self._blueprints[index]


def _make_library() -> list[ActorBlueprint]:
    def vehicle(id: str, wheels: int, colors: list[str], half_length: float) -> ActorBlueprint:
        attrs = {
            "number_of_wheels": ActorAttribute("number_of_wheels", str(wheels)),
            "color": ActorAttribute("color", colors[0], colors),
            "role_name": ActorAttribute("role_name", "autopilot"),
        }
        bp = ActorBlueprint(id, attrs)
        bp._half_length = half_length
        return bp

    colors = ["255,0,0", "0,0,255", "0,200,0", "240,240,240", "30,30,30"]
    camera = {
        "image_size_x": ActorAttribute("image_size_x", "800"),
        "image_size_y": ActorAttribute("image_size_y", "600"),
        "fov": ActorAttribute("fov", "90.0"),
        "sensor_tick": ActorAttribute("sensor_tick", "0.0"),
        "role_name": ActorAttribute("role_name", "front"),
    }
    return [
        vehicle("vehicle.audi.a2", 4, colors, 1.85),
        vehicle("vehicle.tesla.model3", 4, colors, 2.4),
        vehicle("vehicle.bmw.grandtourer", 4, colors, 2.3),
        vehicle("vehicle.carlamotors.carlacola", 4, ["255,255,0"], 2.6),
        vehicle("vehicle.kawasaki.ninja", 2, colors, 1.0),
        ActorBlueprint("sensor.camera.rgb", camera),
        ActorBlueprint("sensor.other.collision", {"role_name": ActorAttribute("role_name", "")}),
        ActorBlueprint(
            "sensor.other.lane_invasion", {"role_name": ActorAttribute("role_name", "")}
        ),
    ]


# -- map -----------------------------------------------------------------------------------


def _lane_center_y(lane_id: int) -> float:
    if lane_id == -5:  # the shoulder, 3 m wide
        return 4 * LANE_WIDTH_M + 1.5
    return math.copysign((abs(lane_id) - 0.5) * LANE_WIDTH_M, -lane_id)


class Waypoint:
    def __init__(self, lane_id: int, s: float):
        self.road_id, self.section_id, self.lane_id, self.s = ROAD_ID, 0, lane_id, float(s)
        self.lane_type = LaneType.Shoulder if lane_id == -5 else LaneType.Driving
        self.lane_width = 3.0 if lane_id == -5 else LANE_WIDTH_M
        self.id = lane_id * 100_000 + int(s)
        yaw = 0.0 if lane_id < 0 else 180.0
        self.transform = Transform(Location(s, _lane_center_y(lane_id), 0.0), Rotation(yaw=yaw))

    def get_left_lane(self) -> Waypoint | None:
        lane = {-1: 1, 1: -1}.get(self.lane_id, self.lane_id + (1 if self.lane_id < 0 else -1))
        return Waypoint(lane, self.s)

    def get_right_lane(self) -> Waypoint | None:
        lane = self.lane_id - 1 if self.lane_id < 0 else self.lane_id + 1
        return Waypoint(lane, self.s) if -5 <= lane <= 4 else None


class Map:
    def __init__(self, town: str):
        self.name = f"Carla/Maps/{town}"

    def get_spawn_points(self) -> list[Transform]:
        return [
            Transform(
                Location(x, _lane_center_y(lane), 0.5), Rotation(yaw=0.0 if lane < 0 else 180.0)
            )
            for x in range(20, 1000, 40)
            for lane in (-1, -2, -3, -4, 1, 2, 3, 4)
        ]

    def get_waypoint(
        self,
        location: Location,
        project_to_road: bool = True,
        lane_type: LaneType = LaneType.Driving,
    ) -> Waypoint | None:
        lanes = [-4, -3, -2, -1, 1, 2, 3, 4] + ([-5] if lane_type != LaneType.Driving else [])
        lane = min(lanes, key=lambda i: abs(location.y - _lane_center_y(i)))
        if not project_to_road and (
            location.x < 0
            or abs(location.y - _lane_center_y(lane)) > Waypoint(lane, 0).lane_width / 2
        ):
            return None
        return Waypoint(lane, max(0.0, location.x))

    def get_waypoint_xodr(self, road_id: int, lane_id: int, s: float) -> Waypoint | None:
        if road_id != ROAD_ID or lane_id not in (-5, -4, -3, -2, -1, 1, 2, 3, 4) or s < 0:
            return None
        return Waypoint(lane_id, s)


# -- sensor data ---------------------------------------------------------------------------


class Image:
    def __init__(
        self, frame: int, timestamp: float, transform: Transform, fov: float, bgra: np.ndarray
    ):
        self.frame = self.frame_number = frame
        self.timestamp, self.transform, self.fov = timestamp, transform, fov
        self.height, self.width = bgra.shape[:2]
        self.raw_data = bgra.tobytes()  # BGRA, row-major, as the real client's buffer


class CollisionEvent:
    def __init__(self, frame: int, timestamp: float, actor, other_actor, normal_impulse: Vector3D):
        self.frame = self.frame_number = frame
        self.timestamp, self.actor, self.other_actor = timestamp, actor, other_actor
        self.normal_impulse = normal_impulse


class LaneInvasionEvent:
    def __init__(self, frame: int, timestamp: float, actor, crossed_lane_markings: list):
        self.frame = self.frame_number = frame
        self.timestamp, self.actor = timestamp, actor
        self.crossed_lane_markings = crossed_lane_markings


# -- server state --------------------------------------------------------------------------


class _ActorState:
    """What the simulator knows about one actor (handles read it like a snapshot)."""

    def __init__(self, actor_id: int, bp: ActorBlueprint, transform: Transform, parent: int | None):
        self.id, self.type_id, self.parent = actor_id, bp.id, parent
        self.attributes = {k: str(v) for k, v in bp._attributes.items()}
        self.location = Location(transform.location.x, transform.location.y, transform.location.z)
        self.yaw = transform.rotation.yaw  # relative to the parent for attached actors
        self.speed, self.yaw_rate_degps, self.accel = 0.0, 0.0, 0.0
        self.control = VehicleControl()
        self.autopilot_port: int | None = None
        self.half_length = getattr(bp, "_half_length", 0.1)
        self.alive = True
        self.callback = None
        self.listener_generation = -1

    @property
    def is_vehicle(self) -> bool:
        return self.type_id.startswith("vehicle.")


class _TMState:
    def __init__(self, port: int):
        self.port, self.synchronous, self.seed = port, False, None
        self.speed_difference_pct = 30.0
        self.distance_to_leading_m = 2.5
        self.rng = random.Random(0)


class FakeServer:
    """One simulator; tests inspect it and inject faults."""

    def __init__(self, port: int, town: str):
        self.port, self.town = port, town
        self.generation = 0  # bumped by a dropped connection: older handles stop working
        self.episode_id = 1
        self.frame, self.elapsed_s = 1000, 0.0
        self.settings = WorldSettings()
        self.weather = copy.copy(WeatherParameters.ClearNoon)
        self.actors: dict[int, _ActorState] = {}
        self.next_id = 1
        self.traffic_managers: dict[int, _TMState] = {}
        self.library = _make_library()
        self.drop_after_ticks: int | None = None
        self.drop_crashes = False
        self.fail_get_world = 0
        self.silent_cameras = False
        # > 0: sensor data reaches the callbacks from timer threads this long after the tick,
        # as with the real client (whose sensor threads deliver after tick() returns).
        self.sensor_delay_s = 0.0
        self.traffic_light: TrafficLightState | None = None
        self.pending_impulses: list[float] = []
        self.num_ticks = 0
        self.loaded_maps: list[str] = []

    # test helpers
    def vehicles(self) -> list[_ActorState]:
        return [a for a in self.actors.values() if a.is_vehicle]

    def sensors(self) -> list[_ActorState]:
        return [a for a in self.actors.values() if a.type_id.startswith("sensor.")]

    def hero(self) -> _ActorState:
        return next(a for a in self.vehicles() if a.attributes.get("role_name") == "hero")

    def tm(self, port: int) -> _TMState:
        return self.traffic_managers.setdefault(port, _TMState(port))

    def inject_collision(self, impulse: float) -> None:
        """The next tick reports a collision of ``impulse`` N*s to every collision sensor."""
        self.pending_impulses.append(float(impulse))

    def drop(self, crash: bool = False) -> None:
        """Lose every connection; ``crash`` also wipes the world like a restarted server."""
        self.generation += 1
        if crash:
            self.episode_id += 1
            self.actors.clear()
            self.settings = WorldSettings()
            self.traffic_managers.clear()

    # simulation
    def world_pose(self, state: _ActorState) -> tuple[Location, float]:
        if state.parent is None:
            return state.location, state.yaw
        parent = self.actors.get(state.parent) or state  # a detached sensor stays in place
        ploc, pyaw = self.world_pose(parent) if parent is not state else (Location(), 0.0)
        c, s = math.cos(math.radians(pyaw)), math.sin(math.radians(pyaw))
        rel = state.location
        loc = Location(
            ploc.x + c * rel.x - s * rel.y, ploc.y + s * rel.x + c * rel.y, ploc.z + rel.z
        )
        return loc, pyaw + state.yaw

    def overlaps(
        self, location: Location, half_length: float, ignore: int | None = None
    ) -> int | None:
        for other in self.vehicles():
            if (
                other.id != ignore
                and abs(other.location.x - location.x) < half_length + other.half_length
            ):
                if abs(other.location.y - location.y) < 1.8:
                    return other.id
        return None

    def spawn(self, bp: ActorBlueprint, transform: Transform, parent: int | None) -> _ActorState:
        if parent is not None and parent not in self.actors:
            raise RuntimeError(f"unable to attach actor: parent {parent} not found")
        if (
            bp.id.startswith("vehicle.")
            and self.overlaps(transform.location, bp._half_length) is not None
        ):
            raise RuntimeError("Spawn failed because of collision at spawn position")
        state = _ActorState(self.next_id, bp, transform, parent)
        self.next_id += 1
        self.actors[state.id] = state
        return state

    def destroy(self, actor_id: int) -> bool:
        state = self.actors.pop(actor_id, None)
        if state is not None:
            state.alive = False
        return state is not None

    def tick(self) -> int:
        dt = self.settings.fixed_delta_seconds or 0.05
        vehicles = sorted(self.vehicles(), key=lambda v: v.id)
        previous_y = {v.id: v.location.y for v in vehicles}
        for v in vehicles:
            if v.autopilot_port is not None:
                v.control = self._autopilot(v, vehicles, self.tm(v.autopilot_port))
        for v in vehicles:
            c = v.control
            v.accel = 4.0 * c.throttle - 8.0 * c.brake - 0.01 * v.speed
            v.speed = max(0.0, v.speed + v.accel * dt)
            v.yaw_rate_degps = math.degrees(v.speed / 2.8 * math.tan(math.radians(35.0 * c.steer)))
            v.yaw += v.yaw_rate_degps * dt
            v.location = Location(
                v.location.x + v.speed * math.cos(math.radians(v.yaw)) * dt,
                v.location.y + v.speed * math.sin(math.radians(v.yaw)) * dt,
                0.0,  # spawned slightly above the road, the car drops onto it
            )
        self.frame += 1
        self.elapsed_s += dt
        self.num_ticks += 1
        self._deliver(vehicles, previous_y)
        return self.frame

    def _autopilot(
        self, v: _ActorState, vehicles: list[_ActorState], tm: _TMState
    ) -> VehicleControl:
        target = SPEED_LIMIT_MPS * (1.0 - tm.speed_difference_pct / 100.0)
        for other in vehicles:
            gap = other.location.x - v.location.x - other.half_length - v.half_length
            if other is not v and abs(other.location.y - v.location.y) < 1.8 and 0 < gap < 20.0:
                target = min(target, other.speed)
        accel = max(-6.0, min(3.0, 2.0 * (target - v.speed)))
        lane_y = _lane_center_y(Map(self.town).get_waypoint(v.location).lane_id)
        steer = -0.05 * (v.location.y - lane_y) - 0.02 * v.yaw + tm.rng.uniform(-0.02, 0.02)
        steer = max(-1.0, min(1.0, steer))
        return VehicleControl(
            throttle=max(accel, 0.0) / 4.0, steer=steer, brake=max(-accel, 0.0) / 8.0
        )

    def _deliver(self, vehicles: list[_ActorState], previous_y: dict[int, float]) -> None:
        """Sensor data of this frame to the listeners of the current connection."""
        impulses, self.pending_impulses = self.pending_impulses, []
        for sensor in sorted(self.sensors(), key=lambda s: s.id):
            if sensor.callback is None or sensor.listener_generation != self.generation:
                continue
            send = sensor.callback
            if self.sensor_delay_s > 0:
                send = _delayed(sensor.callback, self.sensor_delay_s)
            parent = self.actors.get(sensor.parent)
            if sensor.type_id == "sensor.camera.rgb":
                if not self.silent_cameras:
                    send(self._render(sensor))
            elif sensor.type_id == "sensor.other.collision" and parent is not None:
                for impulse in impulses:
                    normal = Vector3D(impulse * 0.6, impulse * 0.8, 0.0)  # |normal| = impulse
                    send(CollisionEvent(self.frame, self.elapsed_s, None, None, normal))
                hit = self.overlaps(parent.location, parent.half_length, ignore=parent.id)
                if hit is not None:
                    relative = abs(parent.speed - self.actors[hit].speed) * 1500.0 + 100.0
                    normal = Vector3D(relative, 0.0, 0.0)
                    send(CollisionEvent(self.frame, self.elapsed_s, None, None, normal))
            elif sensor.type_id == "sensor.other.lane_invasion" and parent is not None:
                before = math.floor(previous_y.get(parent.id, parent.location.y) / LANE_WIDTH_M)
                if before != math.floor(parent.location.y / LANE_WIDTH_M):
                    send(LaneInvasionEvent(self.frame, self.elapsed_s, None, ["Broken"]))

    def _render(self, camera: _ActorState) -> Image:
        width = int(camera.attributes["image_size_x"])
        height = int(camera.attributes["image_size_y"])
        fov = float(camera.attributes["fov"])
        loc, yaw = self.world_pose(camera)
        bgra = np.zeros((height, width, 4), np.uint8)
        bgra[..., 3] = 255
        tint = zlib.crc32(f"{camera.yaw:.1f}".encode()) % 200  # sky colour by mount yaw
        bgra[: height // 2, :, :3] = (tint, 180 - tint // 2, 60 + tint // 3)
        bgra[height // 2 :, :, :3] = 80 + 20 * (int(loc.x) // 2 % 2)  # road band moves with x
        for v in self.vehicles():
            if v.id == camera.parent:
                continue
            dx, dy = v.location.x - loc.x, v.location.y - loc.y
            distance = math.hypot(dx, dy)
            bearing = (math.degrees(math.atan2(dy, dx)) - yaw + 180.0) % 360.0 - 180.0
            if distance < 1.0 or distance > 80.0 or abs(bearing) > fov / 2:
                continue
            col = int((bearing / fov + 0.5) * width)
            half = max(1, int(width * 2.0 / distance))
            r, g, b = (int(c) for c in v.attributes.get("color", "128,128,128").split(","))
            rows = slice(max(0, height // 2 - half), min(height, height // 2 + half))
            bgra[rows, max(0, col - half) : min(width, col + half), :3] = (b, g, r)
        transform = Transform(loc, Rotation(yaw=yaw))
        return Image(self.frame, self.elapsed_s, transform, fov, bgra)


def _delayed(callback, delay_s: float):
    def send(data) -> None:
        timer = threading.Timer(delay_s, callback, args=(data,))
        timer.daemon = True
        timer.start()

    return send


# -- client-side handles -------------------------------------------------------------------


class _Connection:
    """A client's link to a server; every call that needs the server goes through check()."""

    def __init__(self, host: str, port: int, timeout_s: float, server: FakeServer):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.server, self.generation = server, server.generation

    def check(self) -> FakeServer:
        if _SERVERS.get(self.port) is not self.server or self.generation != self.server.generation:
            raise _timeout(self.host, self.port, self.timeout_s)
        return self.server


class Actor:
    def __init__(self, conn: _Connection, state: _ActorState):
        self._conn, self._state = conn, state
        self.id, self.type_id = state.id, state.type_id
        self.attributes = dict(state.attributes)
        self.bounding_box = BoundingBox(Location(), Vector3D(state.half_length, 0.9, 0.8))

    @property
    def parent(self) -> Actor | None:
        server = self._conn.server
        parent = server.actors.get(self._state.parent) if self._state.parent else None
        return _handle(self._conn, parent) if parent else None

    @property
    def is_alive(self) -> bool:
        self._conn.check()
        return self._state.alive

    # Getters read the last snapshot: no server round trip, no error after a drop.
    def get_transform(self) -> Transform:
        loc, yaw = self._conn.server.world_pose(self._state)
        return Transform(Location(loc.x, loc.y, loc.z), Rotation(yaw=yaw))

    def get_location(self) -> Location:
        return self.get_transform().location

    def get_velocity(self) -> Vector3D:
        s = self._state
        yaw = math.radians(s.yaw)
        return Vector3D(s.speed * math.cos(yaw), s.speed * math.sin(yaw), 0.0)

    def get_angular_velocity(self) -> Vector3D:
        return Vector3D(0.0, 0.0, self._state.yaw_rate_degps)  # deg/s, as the real client

    def get_acceleration(self) -> Vector3D:
        yaw = math.radians(self._state.yaw)
        return Vector3D(self._state.accel * math.cos(yaw), self._state.accel * math.sin(yaw), 0.0)

    def destroy(self) -> bool:
        return self._conn.check().destroy(self.id)


class Vehicle(Actor):
    def apply_control(self, control: VehicleControl) -> None:
        self._conn.check()
        if self._state.autopilot_port is None:  # the TM overrides manual control
            self._state.control = copy.copy(control)

    def get_control(self) -> VehicleControl:
        return copy.copy(self._state.control)

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        server = self._conn.check()
        server.tm(tm_port)
        self._state.autopilot_port = tm_port if enabled else None

    def is_at_traffic_light(self) -> bool:
        return self._conn.server.traffic_light is not None

    def get_traffic_light_state(self) -> TrafficLightState:
        light = self._conn.server.traffic_light
        return TrafficLightState.Green if light is None else light


class Sensor(Actor):
    @property
    def is_listening(self) -> bool:
        return self._state.callback is not None

    def listen(self, callback) -> None:
        self._conn.check()
        self._state.callback = callback
        self._state.listener_generation = self._conn.generation

    def stop(self) -> None:
        self._conn.check()
        self._state.callback = None


def _handle(conn: _Connection, state: _ActorState) -> Actor:
    if state.is_vehicle:
        return Vehicle(conn, state)
    return Sensor(conn, state) if state.type_id.startswith("sensor.") else Actor(conn, state)


class ActorList(list):
    def filter(self, wildcard_pattern: str) -> ActorList:
        return ActorList(a for a in self if fnmatch.fnmatch(a.type_id, wildcard_pattern))

    def find(self, actor_id: int) -> Actor | None:
        return next((a for a in self if a.id == actor_id), None)


class TrafficManager:
    def __init__(self, conn: _Connection, port: int):
        self._conn, self._port = conn, port
        conn.check().tm(port)

    def _tm(self) -> _TMState:
        return self._conn.check().tm(self._port)

    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool) -> None:
        self._tm().synchronous = bool(mode_switch)

    def set_random_device_seed(self, value: int) -> None:
        tm = self._tm()
        tm.seed, tm.rng = int(value), random.Random(int(value))

    def global_percentage_speed_difference(self, percentage: float) -> None:
        self._tm().speed_difference_pct = float(percentage)

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._tm().distance_to_leading_m = float(distance)


class World:
    def __init__(self, conn: _Connection):
        self._conn = conn

    @property
    def id(self) -> int:
        return self._conn.server.episode_id

    def get_map(self) -> Map:
        return Map(self._conn.check().town)

    def get_settings(self) -> WorldSettings:
        return copy.copy(self._conn.check().settings)

    def apply_settings(self, settings: WorldSettings, seconds: float = 0.0) -> int:
        server = self._conn.check()
        server.settings = copy.copy(settings)
        return server.frame

    def get_weather(self) -> WeatherParameters:
        return copy.copy(self._conn.check().weather)

    def set_weather(self, weather: WeatherParameters) -> None:
        self._conn.check().weather = copy.copy(weather)

    def get_blueprint_library(self) -> BlueprintLibrary:
        return BlueprintLibrary(copy.deepcopy(self._conn.check().library))

    def spawn_actor(
        self,
        blueprint: ActorBlueprint,
        transform: Transform,
        attach_to: Actor | None = None,
        attachment_type: AttachmentType = AttachmentType.Rigid,
        bone: str = "",
    ) -> Actor:
        server = self._conn.check()
        parent = attach_to.id if attach_to is not None else None
        return _handle(self._conn, server.spawn(blueprint, transform, parent))

    def try_spawn_actor(
        self, blueprint, transform, attach_to=None, attachment_type=AttachmentType.Rigid, bone=""
    ):
        try:
            return self.spawn_actor(blueprint, transform, attach_to, attachment_type, bone)
        except RuntimeError as err:
            if "time-out" in str(err):
                raise
            return None

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        server = self._conn.check()
        ids = sorted(server.actors) if actor_ids is None else actor_ids
        return ActorList(_handle(self._conn, server.actors[i]) for i in ids if i in server.actors)

    def tick(self, seconds: float = 0.0) -> int:
        server = self._conn.check()
        if server.drop_after_ticks is not None:
            if server.drop_after_ticks <= 0:
                server.drop_after_ticks = None
                server.drop(crash=server.drop_crashes)
                raise _timeout(self._conn.host, self._conn.port, seconds or self._conn.timeout_s)
            server.drop_after_ticks -= 1
        return server.tick()


class Client:
    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0):
        self._host, self._port, self._timeout_s = host, int(port), 5.0
        self._conn: _Connection | None = None

    def set_timeout(self, seconds: float) -> None:
        self._timeout_s = float(seconds)

    def _server(self) -> FakeServer:
        server = _SERVERS.get(self._port)
        if server is None:
            raise _timeout(self._host, self._port, self._timeout_s)
        return server

    def _connection(self) -> _Connection:
        if self._conn is None:
            raise _timeout(self._host, self._port, self._timeout_s)
        return self._conn

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_server_version(self) -> str:
        self._server()
        return "0.9.16"

    def get_world(self) -> World:
        server = self._server()
        if server.fail_get_world > 0:
            server.fail_get_world -= 1
            raise _timeout(self._host, self._port, self._timeout_s)
        self._conn = _Connection(self._host, self._port, self._timeout_s, server)
        return World(self._conn)

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers=None) -> World:
        server = self._connection().check()
        if map_name not in ("Town01", "Town04", "Town10HD"):
            raise RuntimeError("map not found")
        server.town, server.episode_id = map_name, server.episode_id + 1
        server.actors.clear()
        server.loaded_maps.append(map_name)
        if reset_settings:
            server.settings = WorldSettings()
        return World(self._conn)

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        return TrafficManager(self._connection(), port)

    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list:
        server = self._connection().check()
        responses = [_execute(server, self._conn, c) for c in commands]
        if do_tick:
            server.tick()
        return responses


# -- command batches -----------------------------------------------------------------------


class _Response:
    def __init__(self, actor_id: int, error: str = ""):
        self.actor_id, self.error = actor_id, error

    def has_error(self) -> bool:
        return bool(self.error)


class _SpawnActor:
    def __init__(self, blueprint: ActorBlueprint, transform: Transform, parent=None):
        # The real command copies the blueprint: later set_attribute calls do not leak in.
        self.blueprint, self.transform = copy.deepcopy(blueprint), copy.deepcopy(transform)
        self.parent = parent.id if isinstance(parent, Actor) else parent
        self.then_commands: list = []

    def then(self, command) -> _SpawnActor:
        self.then_commands.append(command)
        return self


class _SetAutopilot:
    def __init__(self, actor, enabled: bool, tm_port: int = 8000):
        self.actor_id = actor.id if isinstance(actor, Actor) else int(actor)
        self.enabled, self.tm_port = enabled, tm_port


class _DestroyActor:
    def __init__(self, actor):
        self.actor_id = actor.id if isinstance(actor, Actor) else int(actor)


def _execute(server: FakeServer, conn: _Connection, cmd, future_id: int = 0) -> _Response:
    if isinstance(cmd, _SpawnActor):
        try:
            state = server.spawn(cmd.blueprint, cmd.transform, cmd.parent)
        except RuntimeError as err:
            return _Response(0, str(err))
        for follow in cmd.then_commands:
            response = _execute(server, conn, follow, future_id=state.id)
            if response.error:
                return _Response(state.id, response.error)
        return _Response(state.id)
    actor_id = cmd.actor_id or future_id  # FutureActor is 0
    if isinstance(cmd, _SetAutopilot):
        if actor_id not in server.actors:
            return _Response(actor_id, f"unable to set autopilot: actor {actor_id} not found")
        server.tm(cmd.tm_port)
        server.actors[actor_id].autopilot_port = cmd.tm_port if cmd.enabled else None
        return _Response(actor_id)
    if isinstance(cmd, _DestroyActor):
        ok = server.destroy(actor_id)
        return _Response(actor_id, "" if ok else f"unable to destroy actor {actor_id}: not found")
    raise TypeError(f"unsupported command {type(cmd).__name__}")


command = types.SimpleNamespace(
    SpawnActor=_SpawnActor,
    SetAutopilot=_SetAutopilot,
    DestroyActor=_DestroyActor,
    FutureActor=0,
    Response=_Response,
)
