"""The schema of ``manifest.json``: its keys, their types and ranges, and the cross-checks
between its parts. Every reader of a manifest (local or on the Hub) goes through
:func:`check_manifest` (``manifest.parse_manifest`` calls it), so a manifest written by
someone else is trusted only once it holds together; an error is one line naming the file,
the field, the value and what was expected.

Known fields are typed when present; the required ones are those every writer has written
since the manifest's first shard (a section starts with an empty ``shards`` table). Unknown
fields are allowed: a newer writer may add some.
"""

from __future__ import annotations

from pipeline.data import schema
from pipeline.errors import SemoreError
from semore.checks import (
    INT64_MAX,
    AnyValue,
    CheckError,
    Float,
    Int,
    ListOf,
    MapOf,
    Opt,
    Record,
    Str,
)

# Keys of manifest.json (the data-format keys every reader and writer of it uses).
FORMAT_VERSION = "format_version"
SEMORE_VERSION = "semore_version"
RAW = "raw"  # the stage-1 section
ANN = "ann"  # the stage-2 section
SHARDS = "shards"  # shard name -> its entry
TOTALS = "totals"  # sums of the shard entries' numbers, plus num_shards
SKIPPED_SHARDS = "skipped_shards"  # ann: raw shard name -> why it has no ann shard
CONFIG_HASH = "config_hash"
EMBEDDING_DIM = "embedding_dim"
IMAGE_HEIGHT = "image_height"
IMAGE_WIDTH = "image_width"
ACTION_NAMES = "action_names"
# Keys of a shard entry.
NUM_SAMPLES = "num_samples"
NUM_EPISODES = "num_episodes"
NUM_SHARDS = "num_shards"
EPISODES = "episodes"  # global episode indices held by the shard
RAW_SHARD = "raw_shard"  # ann: the raw shard it annotates
SKIPPED_KEYS = "skipped_keys"  # ann: raw keys left out (--skip-bad)
SKIPPED_SAMPLES = "skipped_samples"

# A shard holds whole episodes: at most every step of every episode of the dataset.
MAX_SHARD_SAMPLES = schema.MAX_EPISODES * schema.MAX_EPISODE_STEPS
COUNT = Int(0, INT64_MAX)  # caption lookups, cache hits and the like
EPISODE = Int(0, schema.MAX_EPISODES - 1)


def shard_name(prefix: str) -> Str:
    return Str(
        pattern=rf"{prefix}-\d{{6}}\{schema.SHARD_SUFFIX}", what=f"a shard name {prefix}-NNNNNN.tar"
    )


SAMPLE_KEY = Str(pattern=schema.KEY_PATTERN, what="a sample key RUN_WW_EEEEEE_SSSSS")
SHARD_ENTRY = {
    NUM_SAMPLES: Int(0, MAX_SHARD_SAMPLES),
    NUM_EPISODES: Int(0, schema.MAX_EPISODES),
    EPISODES: ListOf(EPISODE, unique=True),
}
RAW_SHARD_ENTRY = Record(
    {
        **SHARD_ENTRY,
        "return_sum": Float(),
        "distance_m": Float(0.0),
        "collisions": Int(0, MAX_SHARD_SAMPLES),
        "expert_steps": Int(0, MAX_SHARD_SAMPLES),
    },
    required=(NUM_SAMPLES, NUM_EPISODES, EPISODES),
)
ANN_SHARD_ENTRY = Record(
    {
        **SHARD_ENTRY,
        RAW_SHARD: shard_name(schema.RAW_PREFIX),
        SKIPPED_KEYS: ListOf(SAMPLE_KEY, unique=True),
        SKIPPED_SAMPLES: Int(0, MAX_SHARD_SAMPLES),
        "captioned_steps": Int(0, MAX_SHARD_SAMPLES),
        "flagged_captions": Int(0, 2 * MAX_SHARD_SAMPLES),
        "retried_captions": Int(0, 2 * MAX_SHARD_SAMPLES),
        "caption_lookups": COUNT,
        "cache_hits": COUNT,
        "encoder_calls": COUNT,
    },
    required=(NUM_SAMPLES,),
)
PROVENANCE = {
    "command": Str(),
    "config": MapOf(AnyValue()),
    CONFIG_HASH: Str(),
    "git_revision": Opt(Str()),
    TOTALS: MapOf(Float()),
}
RAW_SECTION = Record(
    {
        **PROVENANCE,
        "backend": Str(),
        "scenario": Str(),
        "run": Str(pattern=schema.RUN_NAME_PATTERN, what="1-32 characters of [A-Za-z0-9-]"),
        "seed": Int(0, INT64_MAX),
        "episodes_per_shard": Int(1, schema.MAX_EPISODES),
        ACTION_NAMES: ListOf(Str(), 1, 64),
        "camera_names": ListOf(Str(), 1, 64),
        IMAGE_HEIGHT: Int(1, schema.MAX_IMAGE_SIZE),
        IMAGE_WIDTH: Int(1, schema.MAX_IMAGE_SIZE),
        "step_duration_s": Float(0.0, 3600.0, low_open=True),
        SHARDS: MapOf(RAW_SHARD_ENTRY, key=shard_name(schema.RAW_PREFIX)),
    },
    required=(SHARDS,),
)
ANN_SECTION = Record(
    {
        **PROVENANCE,
        "captioner": Str(),
        "text_encoder": Str(),
        "prompts": MapOf(AnyValue()),
        EMBEDDING_DIM: Int(1, 1 << 20),
        "motion_targets": ListOf(ListOf(Str(), 2, 2), 1, 256),
        "motion_target_fields": MapOf(Str()),
        "keyframe_stride": Int(1, schema.MAX_EPISODE_STEPS),
        "raw_config_hash": Opt(Str()),
        "cache_scope": Str(),
        SHARDS: MapOf(ANN_SHARD_ENTRY, key=shard_name(schema.ANN_PREFIX)),
        SKIPPED_SHARDS: MapOf(Str(), key=shard_name(schema.RAW_PREFIX)),
    },
    required=(EMBEDDING_DIM, SHARDS),
)
MANIFEST = Record(
    {
        FORMAT_VERSION: Int(0, INT64_MAX),
        SEMORE_VERSION: Str(),
        RAW: RAW_SECTION,
        ANN: ANN_SECTION,
    },
    required=(FORMAT_VERSION, SEMORE_VERSION),
)
# Totals that are exact sums (the float sums may differ in their last bits).
EXACT_TOTALS = (NUM_SHARDS, NUM_SAMPLES, NUM_EPISODES)


def check_manifest(manifest: object, where: str) -> None:
    """Raise a one-line ``SemoreError`` (``where`` names the file) when ``manifest`` does not
    follow the schema or its parts disagree: entry counts, totals, episodes in two shards."""
    try:
        MANIFEST.check(manifest, "manifest")
        for name in (RAW, ANN):
            if name in manifest:
                _check_section(manifest[name], name)
    except CheckError as err:
        raise SemoreError(f"{where}: {_without_root(err)}") from None


def _without_root(err: CheckError) -> str:
    return str(err).removeprefix("manifest.")


def _check_section(section: dict, name: str) -> None:
    seen: dict[int, str] = {}  # episode -> the shard that holds it (raw only)
    for shard, entry in section[SHARDS].items():
        path = f"{name}.{SHARDS}.{shard}"
        episodes = entry.get(EPISODES)
        if episodes is not None and entry.get(NUM_EPISODES, len(episodes)) != len(episodes):
            raise CheckError(
                f"{path}.{NUM_EPISODES}",
                entry[NUM_EPISODES],
                f"{len(episodes)}, the length of episodes",
            )
        if name == RAW and episodes:
            if entry[NUM_SAMPLES] < len(episodes):
                raise CheckError(
                    f"{path}.{NUM_SAMPLES}", entry[NUM_SAMPLES],
                    f"at least one step for each of its {len(episodes)} episodes",
                )  # fmt: skip
            for episode in episodes:
                if episode in seen:
                    raise CheckError(
                        f"{path}.{EPISODES}", episode,
                        f"an episode in one shard only (it is in {seen[episode]} too)",
                    )  # fmt: skip
                seen[episode] = shard
        skipped = entry.get(SKIPPED_KEYS)
        if skipped is not None and entry.get(SKIPPED_SAMPLES, len(skipped)) != len(skipped):
            raise CheckError(
                f"{path}.{SKIPPED_SAMPLES}",
                entry[SKIPPED_SAMPLES],
                f"{len(skipped)}, the length of skipped_keys",
            )
        if name == ANN and RAW_SHARD in entry and _index(entry[RAW_SHARD]) != _index(shard):
            raise CheckError(
                f"{path}.{RAW_SHARD}", entry[RAW_SHARD], f"the raw shard of index {_index(shard)}"
            )
    _check_totals(section, name)


def _check_totals(section: dict, name: str) -> None:
    if TOTALS not in section:
        return
    shards = section[SHARDS].values()
    sums = {
        NUM_SHARDS: len(section[SHARDS]),
        NUM_SAMPLES: sum(e[NUM_SAMPLES] for e in shards),
        NUM_EPISODES: sum(e.get(NUM_EPISODES, 0) for e in shards),
    }
    for key in EXACT_TOTALS:
        if key in section[TOTALS] and section[TOTALS][key] != sums[key]:
            raise CheckError(
                f"{name}.{TOTALS}.{key}",
                section[TOTALS][key],
                f"{sums[key]}, the sum over its shards",
            )


def _index(shard: str) -> int:
    return schema.shard_index(shard)


def stale_annotations(manifest: dict) -> dict[str, str]:
    """Ann shards that no longer annotate their raw shard as the manifest lists it (a
    collect that extended the dataset rewrote the raw shard, or it is gone): ann shard
    name -> why. ``semore-annotate`` redoes them; every other reader refuses them."""
    raw = manifest.get(RAW, {}).get(SHARDS, {})
    stale = {}
    for name, entry in manifest.get(ANN, {}).get(SHARDS, {}).items():
        raw_name = schema.shard_name(schema.RAW_PREFIX, _index(name))
        if raw_name not in raw:
            stale[name] = f"its raw shard {schema.RAW_DIR}/{raw_name} is not in the manifest"
            continue
        covered = entry[NUM_SAMPLES] + len(entry.get(SKIPPED_KEYS, ()))
        if covered != raw[raw_name][NUM_SAMPLES]:
            stale[name] = (
                f"it covers {covered} samples ({entry[NUM_SAMPLES]} annotated, "
                f"{covered - entry[NUM_SAMPLES]} skipped) but {schema.RAW_DIR}/{raw_name} "
                f"holds {raw[raw_name][NUM_SAMPLES]}"
            )
    return stale


def check_pairing(manifest: dict, where: str) -> None:
    """One-line error when an ann shard does not cover its raw shard's samples (for the
    readers of annotations; ``semore-annotate`` redoes such shards instead)."""
    for name, why in sorted(stale_annotations(manifest).items()):
        raise SemoreError(
            f"{where}: {ANN}.{SHARDS}.{name} does not annotate its raw shard: {why}; expected "
            "the same keys (rerun semore-annotate to redo it)"
        )
