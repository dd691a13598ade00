"""The data contract: folder layout, sample keys, member names, format version, validation.

Every stage reads and writes datasets through these constants, so a member name is typed
once. A dataset folder holds ``manifest.json``, ``raw/raw-NNNNNN.tar`` (stage 1) and
``ann/ann-NNNNNN.tar`` (stage 2, same keys and shard boundaries), and ``README.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

from pipeline.errors import SemoreError

# Bumped whenever a member's name, dtype or meaning changes; readers refuse other versions.
FORMAT_VERSION = 2  # 2: lane-relative pose in state.json (lateral offset, road edges)

MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
RAW_DIR = "raw"
ANN_DIR = "ann"
RAW_PREFIX = "raw"
ANN_PREFIX = "ann"
SHARD_SUFFIX = ".tar"

# Raw members (stage 1). Single-camera datasets store `rgb.png`; multi-camera ones store
# one `cam_<name>.png` per camera plus the stitched panorama as `rgb.png`.
RGB = "rgb.png"
CAMERA_PREFIX = "cam_"
ACTION = "action.npy"  # float32 (action_dim,) in [-1, 1]
REWARD = "reward.npy"  # float32 scalar
STATE = "state.json"  # privileged simulator state, units in the field names
STEP = "step.json"  # episode bookkeeping, see STEP_FIELDS

STEP_FIELDS = (
    "episode",
    "step",
    "is_first",
    "is_last",
    "is_terminal",
    "truncated",
    "episode_seed",
    "policy",
    "distance_m",  # true distance driven by this step's action, summed over simulator ticks
    "collision",  # this step's action ended in a collision
)

# Annotation members (stage 2).
CAPTION_SEM = "caption_sem.txt"
CAPTION_MOT = "caption_mot.txt"
EMB_SEM = "emb_sem.npy"  # float32 (embedding_dim,), unit norm
EMB_MOT = "emb_mot.npy"  # float32 (embedding_dim,), unit norm
MOTION = "motion.npy"  # float32 (len(MOTION_TARGETS),), names and units in the manifest
ANN_INFO = "ann.json"  # which step was captioned, flags for empty/failed captions
ANN_MEMBERS = (CAPTION_SEM, CAPTION_MOT, EMB_SEM, EMB_MOT, MOTION, ANN_INFO)

# state.json keeps one JSON type per field in every sample (Hugging Face `datasets` infers
# column types from the first samples and fails on a later null): with no vehicle ahead
# within range, `lead_present` is false, `lead_distance_m` is LEAD_RANGE_M and
# `lead_closing_speed_mps` is 0; with no traffic light, `traffic_light` is "none".
LEAD_RANGE_M = 100.0
# `neighbours_per_lane` counts vehicles within this distance along the road, ahead or behind.
NEIGHBOUR_RANGE_M = 50.0
NO_TRAFFIC_LIGHT = "none"


@dataclass
class EgoState:
    """The ``state.json`` fields every backend writes (backends may add their own after them).

    Plain JSON types, units in the names. Signs: ``lat_speed_mps`` > 0 to the right of the
    lane direction, ``heading_rad`` relative to the lane, ``lane_index`` 0 = leftmost lane.
    """

    speed_mps: float
    lon_speed_mps: float  # along the lane
    lat_speed_mps: float  # across the lane
    acceleration_mps2: float
    heading_rad: float  # the heading error to the lane: 0 when parallel to it
    yaw_rate_radps: float
    lateral_offset_m: float  # from the lane centre, > 0 to the right
    road_edge_left_m: float  # from the ego's centre to the left edge of the leftmost lane
    road_edge_right_m: float  # ... and to the right edge of the rightmost lane
    position_m: list[float]  # [x, y] in the simulator's world frame
    lane_index: int
    lanes_count: int
    lead_present: bool
    lead_distance_m: float  # bumper gap; LEAD_RANGE_M when there is no lead
    lead_closing_speed_mps: float  # > 0 when the gap shrinks; 0 when there is no lead
    neighbours_per_lane: list[int]
    collision: bool
    collision_impulse: float
    on_road: bool
    steer: float
    time_s: float

    @staticmethod
    def lead_fields(lead: tuple[float, float] | None) -> dict:
        """``lead_present`` / ``lead_distance_m`` / ``lead_closing_speed_mps`` of a
        ``(gap_m, closing_speed_mps)`` lead, or of no lead within range."""
        if lead is None:
            return {
                "lead_present": False,
                "lead_distance_m": LEAD_RANGE_M,
                "lead_closing_speed_mps": 0.0,
            }
        return {
            "lead_present": True,
            "lead_distance_m": float(lead[0]),
            "lead_closing_speed_mps": float(lead[1]),
        }

    def to_json(self) -> dict:
        """The dict written to ``state.json``, every value a plain JSON type."""
        return {f.name: _PLAIN[f.type](getattr(self, f.name)) for f in fields(self)}


# Field annotation (a string, see the __future__ import) -> conversion to a plain JSON value;
# numpy scalars from the simulators become Python floats, ints and bools.
_PLAIN = {
    "float": float,
    "int": int,
    "bool": bool,
    "list[float]": lambda values: [float(v) for v in values],
    "list[int]": lambda values: [int(v) for v in values],
}


def lead_distance_m(state: dict) -> float | None:
    """The gap to the lead vehicle in metres, or None when there is none within range."""
    value = state.get("lead_distance_m")
    if value is None or not state.get("lead_present", True):
        return None
    return float(value)


# Ego-motion targets written to motion.npy, in this order: (name, unit).
MOTION_TARGETS = (
    ("speed", "m/s"),
    ("acceleration", "m/s^2"),
    ("yaw_rate", "rad/s"),
    ("lateral_speed", "m/s"),
    # Where in its lane the car is and how it points: what staying on the road needs.
    ("lateral_offset", "m"),
    ("heading_error", "rad"),
)
# Where each motion target is read from in state.json (units in the field names).
MOTION_STATE_FIELDS = {
    "speed": "speed_mps",
    "acceleration": "acceleration_mps2",
    "yaw_rate": "yaw_rate_radps",
    "lateral_speed": "lat_speed_mps",
    "lateral_offset": "lateral_offset_m",
    "heading_error": "heading_rad",
}


def motion_targets(state: dict, where: str = "") -> np.ndarray:
    """``motion.npy``: float32 (len(MOTION_TARGETS),) read from ``state`` in schema order and
    units; a one-line error when a field is missing or not a number."""
    values = []
    for name, _unit in MOTION_TARGETS:
        field = MOTION_STATE_FIELDS[name]
        value = state.get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SemoreError(
                f"{where}state.json field {field!r} is {value!r}: expected a number (motion target {name!r})"
            )
        values.append(value)
    return np.asarray(values, dtype=np.float32)


# The privileged state the scene captions are written from, as numbers: the target of the
# no-language control, which regresses these instead of aligning to caption embeddings.
CAPTION_STATE_FIELDS = (
    "speed_mps",
    "acceleration_mps2",
    "lat_speed_mps",
    "lead_distance_m",
    "lead_closing_speed_mps",
    "lane_index",
    "lanes_count",
    "lateral_offset_m",
    "road_edge_left_m",
    "road_edge_right_m",
    "cars_left_lane",
    "cars_right_lane",
    "collision",
    "on_road",
)


def caption_state(state: dict) -> np.ndarray:
    """float32 (len(CAPTION_STATE_FIELDS),); a missing value (older data, no such lane) is
    NaN for the left/right lane counts -1."""
    lane, per_lane = state.get("lane_index"), state.get("neighbours_per_lane") or []
    derived = {
        "lead_distance_m": min(lead_distance_m(state) or LEAD_RANGE_M, LEAD_RANGE_M),
        "cars_left_lane": per_lane[lane - 1]
        if lane is not None and 0 < lane <= len(per_lane)
        else -1,
        "cars_right_lane": per_lane[lane + 1]
        if lane is not None and lane + 1 < len(per_lane)
        else -1,
    }
    values = [derived.get(name, state.get(name)) for name in CAPTION_STATE_FIELDS]
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)


def motion_manifest_fields() -> dict:
    """Manifest entries: ``motion_targets`` ([name, unit] in motion.npy order) and their state fields."""
    return {
        "motion_targets": [[name, unit] for name, unit in MOTION_TARGETS],
        "motion_target_fields": {name: MOTION_STATE_FIELDS[name] for name, _unit in MOTION_TARGETS},
    }


# Run names become the first key field; keys must not contain dots (webdataset splits
# the member extension at the first dot) nor underscores (the key's field separator).
RUN_NAME_PATTERN = r"[A-Za-z0-9-]{1,32}"
KEY_PATTERN = r"(?P<run>[A-Za-z0-9-]+)_(?P<worker>\d{2})_(?P<episode>\d{6})_(?P<step>\d{5})"
_RUN_NAME = re.compile(f"^{RUN_NAME_PATTERN}$")
_KEY = re.compile(f"^{KEY_PATTERN}$")
# What the key's fixed-width fields can hold: the limits of a dataset's size.
MAX_NODES = 100  # worker: 2 digits, so at most 100 slices (--num-workers) write keys
MAX_EPISODES = 10**6  # episode: 6 digits, global episode indices 0 .. 999999
MAX_EPISODE_STEPS = 10**5  # step: 5 digits, steps 0 .. 99999 of an episode
MAX_IMAGE_SIZE = 4096  # frame height and width, pixels (a 4096x4096 RGB frame is 48 MiB)


@dataclass(frozen=True)
class SampleKey:
    """The parsed fields of a sample key ``{run}_{worker:02d}_{episode:06d}_{step:05d}``."""

    run: str
    worker: int
    episode: int
    step: int

    def __str__(self) -> str:
        return f"{self.run}_{self.worker:02d}_{self.episode:06d}_{self.step:05d}"


def check_run_name(run: str) -> str:
    """Return ``run`` if it can be a key field, else raise a one-line error."""
    if not _RUN_NAME.match(run):
        raise SemoreError(f"run name {run!r} is invalid: expected 1-32 characters of [A-Za-z0-9-]")
    return run


def make_key(run: str, worker: int, episode: int, step: int) -> str:
    """Format a sample key; ``episode`` is the global episode index of the dataset."""
    return str(SampleKey(run, worker, episode, step))


def parse_key(key: str) -> SampleKey:
    """Parse a sample key, raising ``SemoreError`` when it does not follow the contract."""
    match = _KEY.match(key)
    if match is None:
        raise SemoreError(
            f"sample key {key!r} is malformed: expected {{run}}_{{worker:02d}}_{{episode:06d}}_{{step:05d}}"
        )
    return SampleKey(match["run"], int(match["worker"]), int(match["episode"]), int(match["step"]))


def shard_name(prefix: str, index: int) -> str:
    """``raw-000003.tar`` style shard file name."""
    return f"{prefix}-{index:06d}{SHARD_SUFFIX}"


def shard_index(name: str) -> int:
    """Inverse of :func:`shard_name` (accepts a path)."""
    stem = name.rsplit("/", 1)[-1].removesuffix(SHARD_SUFFIX)
    try:
        return int(stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise SemoreError(f"shard name {name!r} is malformed: expected PREFIX-NNNNNN.tar") from None


def validate_raw_sample(sample: dict, where: str = "") -> None:
    """Raise ``SemoreError`` naming the shard/key when a decoded raw sample misses a member."""
    _require(sample, (ACTION, REWARD, STATE, STEP), where)
    if RGB not in sample and not any(k.startswith(CAMERA_PREFIX) for k in sample):
        raise SemoreError(f"{where}sample {sample.get('__key__')!r} has no image: expected {RGB}")


def validate_ann_sample(sample: dict, where: str = "") -> None:
    """Raise ``SemoreError`` naming the shard/key when an annotation sample misses a member."""
    _require(sample, ANN_MEMBERS, where)


def _require(sample: dict, members: tuple[str, ...], where: str) -> None:
    missing = [m for m in members if m not in sample]
    if missing:
        raise SemoreError(
            f"{where}sample {sample.get('__key__')!r} is missing {', '.join(missing)}: "
            f"expected members {', '.join(members)}"
        )
