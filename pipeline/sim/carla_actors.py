"""CARLA actors: where the ego and the traffic spawn, the sensors attached to the ego, their
events of an episode, and the camera images of a frame."""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
from typing import Any

import numpy as np

from pipeline.errors import SemoreError
from pipeline.sim.configs import CarlaConfig

log = logging.getLogger(__name__)

# A waypoint lies on the road surface; spawning there puts the wheels into it.
SPAWN_LIFT_M = 0.3


class SensorEvents:
    """Collision impulses and lane crossings reported by the client's sensor threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._impulses: list[tuple[int, float]] = []  # (frame, |normal_impulse| in N*s)
        self._crossings: list[int] = []  # frames

    def on_collision(self, event: Any) -> None:
        impulse = event.normal_impulse
        size = math.sqrt(impulse.x**2 + impulse.y**2 + impulse.z**2)
        with self._lock:
            self._impulses.append((event.frame, size))

    def on_lane_invasion(self, event: Any) -> None:
        with self._lock:
            self._crossings.append(event.frame)

    def pop(self, frame: int) -> tuple[float, bool]:
        """(summed impulse, lane crossed) of events up to ``frame``; later ones are kept."""
        with self._lock:
            impulse = sum(size for f, size in self._impulses if f <= frame)
            crossed = any(f <= frame for f in self._crossings)
            self._impulses = [(f, size) for f, size in self._impulses if f > frame]
            self._crossings = [f for f in self._crossings if f > frame]
        return float(impulse), crossed


def spawn_transforms(
    carla: Any, world_map: Any, cfg: CarlaConfig, rng: random.Random
) -> tuple[Any, list]:
    """(ego transform, traffic transforms): DBC's highway slots, or the map's spawn points."""
    if cfg.spawn_road_id is None:
        points = list(world_map.get_spawn_points())
        if not points:
            raise SemoreError(f"carla.town {cfg.town} has no spawn points: set carla.spawn_road_id")
        rng.shuffle(points)
        return points[0], points[1 : 1 + cfg.num_vehicles]
    ego_lane = rng.choice(cfg.spawn_lane_ids)
    low_m, high_m = cfg.vehicles_spawn_s_range_m
    gap_m = cfg.vehicles_spawn_gap_m
    slots = [
        (lane, low_m + i * gap_m)
        for lane in cfg.spawn_lane_ids
        for i in range(int((high_m - low_m) // gap_m) + 1)
        if lane != ego_lane or abs(low_m + i * gap_m - cfg.ego_spawn_s_m) >= gap_m
    ]
    chosen = rng.sample(slots, min(cfg.num_vehicles, len(slots)))
    if len(chosen) < cfg.num_vehicles:
        log.warning("only %d spawn slots for %d vehicles", len(chosen), cfg.num_vehicles)
    ego = road_transform(carla, world_map, cfg, ego_lane, cfg.ego_spawn_s_m)
    return ego, [road_transform(carla, world_map, cfg, lane, s_m) for lane, s_m in chosen]


def road_transform(carla: Any, world_map: Any, cfg: CarlaConfig, lane_id: int, s_m: float) -> Any:
    """A spawn transform on OpenDRIVE road ``cfg.spawn_road_id``, lane ``lane_id``, at ``s_m``."""
    road_id = cfg.spawn_road_id
    waypoint = world_map.get_waypoint_xodr(road_id, lane_id, s_m)
    if waypoint is None:
        raise SemoreError(
            f"carla: road {road_id} lane {lane_id} at s={s_m:g} m does not exist in "
            f"{cfg.town}: expected a road of the map (set carla.spawn_road_id to null "
            "to use the map's spawn points)"
        )
    loc, rot = waypoint.transform.location, waypoint.transform.rotation
    return carla.Transform(
        carla.Location(x=loc.x, y=loc.y, z=loc.z + SPAWN_LIFT_M),
        carla.Rotation(pitch=rot.pitch, yaw=rot.yaw, roll=rot.roll),
    )


def spawn_traffic(
    carla: Any, client: Any, library: Any, transforms: list, tm_port: int, rng: random.Random
) -> list[int]:
    """Autopilot vehicles at ``transforms`` in one batch; the ids of those that spawned."""
    blueprints = sorted(
        (bp for bp in library.filter("vehicle.*") if four_wheeled(bp)), key=lambda bp: bp.id
    )
    command = carla.command
    batch = []
    for transform in transforms:
        bp = rng.choice(blueprints)
        if bp.has_attribute("color"):
            bp.set_attribute("color", rng.choice(bp.get_attribute("color").recommended_values))
        bp.set_attribute("role_name", "autopilot")
        autopilot = command.SetAutopilot(command.FutureActor, True, tm_port)
        batch.append(command.SpawnActor(bp, transform).then(autopilot))
    responses = client.apply_batch_sync(batch, False) if batch else []
    ids = [r.actor_id for r in responses if not r.error]
    if len(ids) < len(batch):
        log.debug("%d of %d traffic vehicles failed to spawn", len(batch) - len(ids), len(batch))
    return ids


def attach_sensors(
    carla: Any,
    world: Any,
    library: Any,
    ego: Any,
    cfg: CarlaConfig,
    yaws_deg: list[float],
    events: SensorEvents,
    sensors: list,
    queues: list[queue.Queue],
) -> None:
    """Attach the ego's cameras (one image queue each, in ``yaws_deg`` order) and its collision
    and lane-invasion sensors reporting to ``events``. Each sensor joins ``sensors`` as soon as
    it exists, so a failure half-way still leaves it listed for clean-up."""
    camera_bp = library.find("sensor.camera.rgb")
    camera_bp.set_attribute("image_size_x", str(cfg.image_width))
    camera_bp.set_attribute("image_size_y", str(cfg.image_height))
    camera_bp.set_attribute("fov", str(cfg.camera_fov_deg))
    x, y, z = cfg.camera_location_m
    for yaw in yaws_deg:
        mount = carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(yaw=yaw))
        camera = world.spawn_actor(camera_bp, mount, attach_to=ego)
        sensors.append(camera)
        images: queue.Queue = queue.Queue()
        camera.listen(images.put)
        queues.append(images)
    for blueprint, callback in (
        ("sensor.other.collision", events.on_collision),
        ("sensor.other.lane_invasion", events.on_lane_invasion),
    ):
        sensor = world.spawn_actor(library.find(blueprint), carla.Transform(), attach_to=ego)
        sensors.append(sensor)
        sensor.listen(callback)


def four_wheeled(blueprint: Any) -> bool:
    return (
        blueprint.has_attribute("number_of_wheels")
        and blueprint.get_attribute("number_of_wheels").as_int() == 4
    )


def camera_name(yaw_deg: float) -> str:
    """Member-safe camera name: -120 -> "yawm120", 0 -> "yaw000", 60 -> "yaw060"."""
    return f"yaw{'m' if yaw_deg < 0 else ''}{abs(round(yaw_deg)):03d}"


def await_images(
    camera_queues: list[queue.Queue], frame: int, wait_s: float
) -> list[np.ndarray] | None:
    """RGB images of ``frame`` from every camera, dropping older ones; None on time-out."""
    deadline = time.monotonic() + wait_s
    images = []
    for camera_queue in camera_queues:
        while True:
            try:
                image = camera_queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if image.frame == frame:
                break
            if image.frame > frame:  # ours was skipped: the frame cannot be completed
                return None
        bgra = np.frombuffer(image.raw_data, dtype=np.uint8)
        bgra = bgra.reshape(image.height, image.width, 4)  # (H, W, BGRA)
        images.append(np.ascontiguousarray(bgra[:, :, 2::-1]))  # (H, W, RGB)
    return images


def stitch_frames(images: list[np.ndarray], camera_names: list[str]) -> dict[str, np.ndarray]:
    """The step's frames: one camera as ``rgb``; several as the left-to-right panorama
    ``rgb`` plus each camera under its name (``camera_names``: "rgb" first)."""
    if len(images) == 1:
        return {"rgb": images[0]}
    frames = {"rgb": np.concatenate(images, axis=1)}  # (H, n*W, 3), left to right
    frames.update(zip(camera_names[1:], images, strict=True))
    return frames
