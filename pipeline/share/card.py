"""Dataset cards: the Hugging Face Hub README of a Semore dataset, generated from its manifest.

The template is ``datasets_cards/TEMPLATE.md`` in the repository; the package ships an
identical copy (``pipeline/share/card_template.md``, kept equal by a test) so installed wheels can
render cards too. Placeholders are ``${name}`` (:class:`string.Template`). The card's YAML
front matter declares one Hub config per stage (``raw`` -> ``raw/*.tar``, ``annotations`` ->
``ann/*.tar``) and their features, so ``datasets.load_dataset`` and the Hub viewer read the
shards without a loading script.
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path

import yaml

from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.errors import SemoreError
from pipeline.share.metadata import (
    ANN_CONFIG,
    DEFAULT_LICENSE,
    RAW_CONFIG,
    DatasetId,
    backend_name,
    hub_front_matter,
    infer_features,
    parse_dataset_id,
)
from pipeline.sim.configs import BACKENDS
from pipeline.sim.spec import limitations

TEMPLATE_NAME = "card_template.md"
# Simulator renders are the authors' own data; CC-BY-4.0 is the usual choice for datasets.

_RAW_MEANINGS = {
    schema.RGB: "camera frame (the stitched panorama when there are several cameras)",
    schema.ACTION: "action taken at this step, in [-1, 1]",
    schema.REWARD: "reward earned by this step's action",
    schema.STATE: "privileged simulator state, units in the field names (`speed_mps`, `lead_distance_m`, `lane_index`, ...)",
    schema.STEP: "episode bookkeeping: " + ", ".join(f"`{f}`" for f in schema.STEP_FIELDS),
}
_ANN_MEANINGS = {
    schema.CAPTION_SEM: "semantic caption: what is where",
    schema.CAPTION_MOT: "motion caption: who moves how (from two frames)",
    schema.EMB_SEM: "text embedding of the semantic caption, unit L2 norm",
    schema.EMB_MOT: "text embedding of the motion caption, unit L2 norm",
    schema.ANN_INFO: "which step was captioned; flags for empty or failed captions",
}


def template_text() -> str:
    """The card template shipped with the package."""
    return resources.files("pipeline.share").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def render_card(
    manifest: dict,
    dataset_id: str,
    *,
    features: dict[str, list] | None = None,
    revision: str = "main",
    license: str = DEFAULT_LICENSE,
) -> str:
    """The dataset card (README.md text) of ``manifest`` published as ``dataset_id``.

    ``features`` maps a Hub config name (``raw``, ``annotations``) to its YAML features
    list (``infer_features(...)._to_yaml_list()``); without it ``datasets`` guesses types
    from a few samples.
    """
    ds_id = parse_dataset_id(dataset_id)
    raw = manifest.get("raw")
    if raw is None:
        raise SemoreError(
            "manifest has no 'raw' section: expected a collected dataset (run semore-collect)"
        )
    ann = manifest.get("ann")
    values = {
        **hub_front_matter(raw, ann is not None, ds_id, features, license),
        **_loading_values(raw, ann, ds_id, revision),
        **_provenance_values(manifest, raw),
        **_contents_values(raw, ann),
    }
    return string.Template(template_text()).substitute(values)


def _loading_values(raw: dict, ann: dict | None, ds_id: DatasetId, revision: str) -> dict:
    """Which dataset, version and revision, and the lines that load it."""
    shard_names = sorted(raw.get("shards", {}))
    return {
        "dataset_id": str(ds_id),
        "name": f"{ds_id.name}-v{ds_id.version}",
        "version": f"v{ds_id.version}",
        "revision": revision,
        "annotations_load": (
            f'ann = load_dataset("{ds_id}", "{ANN_CONFIG}", split="train", revision="{revision}")'
            if ann is not None
            else "# this version has no annotations"
        ),
        "first_raw_shard": f"{schema.shard_index(shard_names[0]):06d}" if shard_names else "000000",
        "last_raw_shard": f"{schema.shard_index(shard_names[-1]):06d}" if shard_names else "000000",
    }


def _collect_config(raw: dict) -> dict:
    """The collect config of the backend used (the config carries a section per backend;
    only the one used describes the data)."""
    backend = backend_name(raw)
    return {
        k: v for k, v in (raw.get("config") or {}).items() if k not in set(BACKENDS) - {backend}
    }


def _provenance_values(manifest: dict, raw: dict) -> dict:
    """How the data was produced: command, run, seed, policy, sensors, config and versions."""
    config = _collect_config(raw)
    return {
        "raw_command": _cell(raw.get("command", "not recorded")),
        "run": raw.get("run", "not recorded"),
        "seed": raw.get("seed", "not recorded"),
        "policy": (config.get("policy") or {}).get("name", "not recorded"),
        "cameras": ", ".join(f"`{c}`" for c in raw.get("camera_names", [])) or "not recorded",
        "image_size": f"{raw['image_height']} x {raw['image_width']}"
        if "image_height" in raw
        else "not recorded",
        "step_duration": f"{raw['step_duration_s']} s"
        if "step_duration_s" in raw
        else "not recorded",
        "action_names": _action_text(raw),
        "config_hash": raw.get("config_hash", "not recorded"),
        "format_version": manifest.get("format_version"),
        "semore_version": manifest.get("semore_version", "not recorded"),
        "git_revision": raw.get("git_revision") or "not recorded",
        "raw_config_yaml": yaml.safe_dump(config, sort_keys=True).rstrip(),
    }


def _contents_values(raw: dict, ann: dict | None) -> dict:
    """What is in it: the backend and scenario, counts, schemas, annotations, limitations."""
    backend = backend_name(raw)
    raw_totals, ann_totals = raw.get("totals", {}), (ann or {}).get("totals", {})
    return {
        "backend": backend,
        "scenario": raw.get("scenario", "not recorded"),
        "num_episodes": raw_totals.get("num_episodes", 0),
        "num_samples": raw_totals.get("num_samples", 0),
        "num_shards": raw_totals.get("num_shards", len(raw.get("shards", {}))),
        "num_ann_shards": ann_totals.get("num_shards", 0),
        "annotation_summary": _annotation_summary(ann),
        "raw_schema_table": _raw_schema_table(raw),
        "ann_schema_table": _ann_schema_table(ann),
        "annotation_section": _annotation_section(ann),
        "counts_table": _counts_table(raw_totals, ann_totals if ann is not None else None),
        "simulator_limit": limitations(backend),
        "extra_limits": _extra_limits(raw, raw_totals),
    }


def write_card(
    data_dir: str | Path, dataset_id: str, *, revision: str = "main", license: str = DEFAULT_LICENSE
) -> Path:
    """Render the card of the dataset in ``data_dir`` (with inferred features) to ``DIR/README.md``."""
    data_dir = Path(data_dir)
    manifest = mf.read_manifest(data_dir)
    sections = {RAW_CONFIG: "raw", ANN_CONFIG: "ann"}
    features = {
        config: infer_features(dataset.completed_shards(data_dir, section))._to_yaml_list()
        for config, section in sections.items()
        if section in manifest
    }
    text = render_card(manifest, dataset_id, features=features, revision=revision, license=license)
    path = data_dir / schema.CARD_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _cell(value: object) -> str:
    """A value safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _action_text(raw: dict) -> str:
    names = raw.get("action_names")
    return (
        f"float32 ({len(names)},): " + ", ".join(f"`{n}`" for n in names)
        if names
        else "not recorded"
    )


def _raw_schema_table(raw: dict) -> str:
    size = (
        f"({raw['image_height']}, {raw['image_width']}, 3)"
        if "image_height" in raw
        else "(H, W, 3)"
    )
    action_dim = len(raw.get("action_names") or []) or "A"
    rows = [(f"`{schema.RGB}`", "uint8 PNG", size, _RAW_MEANINGS[schema.RGB])]
    cameras = [c for c in raw.get("camera_names", []) if c != "rgb"]
    if cameras:
        names = ", ".join(cameras)
        rows.append(
            (
                f"`{schema.CAMERA_PREFIX}<name>.png`",
                "uint8 PNG",
                "(h, w, 3)",
                f"one frame per camera: {names}",
            )
        )
    rows += [
        (f"`{schema.ACTION}`", "float32", f"({action_dim},)", _RAW_MEANINGS[schema.ACTION]),
        (f"`{schema.REWARD}`", "float32", "()", _RAW_MEANINGS[schema.REWARD]),
        (f"`{schema.STATE}`", "JSON object", "-", _RAW_MEANINGS[schema.STATE]),
        (f"`{schema.STEP}`", "JSON object", "-", _RAW_MEANINGS[schema.STEP]),
    ]
    return _table(("member", "dtype", "shape", "meaning"), rows)


def _motion_targets(ann: dict) -> list[tuple[str, str]]:
    """(name, unit) pairs from the manifest (lists, dicts or plain names), else the schema's."""
    targets = []
    for target in ann.get("motion_targets") or schema.MOTION_TARGETS:
        if isinstance(target, dict):
            targets.append((str(target.get("name")), str(target.get("unit", ""))))
        elif isinstance(target, (list, tuple)):
            targets.append((str(target[0]), str(target[1]) if len(target) > 1 else ""))
        else:
            targets.append((str(target), ""))
    return targets


def _ann_schema_table(ann: dict | None) -> str:
    if ann is None:
        return "Not included in this version."
    dim = ann.get("embedding_dim", "D")
    targets = _motion_targets(ann)
    motion = "ego-motion targets: " + ", ".join(f"{n} [{u}]" if u else n for n, u in targets)
    rows = [
        (f"`{schema.CAPTION_SEM}`", "UTF-8 text", "-", _ANN_MEANINGS[schema.CAPTION_SEM]),
        (f"`{schema.CAPTION_MOT}`", "UTF-8 text", "-", _ANN_MEANINGS[schema.CAPTION_MOT]),
        (f"`{schema.EMB_SEM}`", "float32", f"({dim},)", _ANN_MEANINGS[schema.EMB_SEM]),
        (f"`{schema.EMB_MOT}`", "float32", f"({dim},)", _ANN_MEANINGS[schema.EMB_MOT]),
        (f"`{schema.MOTION}`", "float32", f"({len(targets)},)", motion),
        (f"`{schema.ANN_INFO}`", "JSON object", "-", _ANN_MEANINGS[schema.ANN_INFO]),
    ]
    return _table(("member", "dtype", "shape", "meaning"), rows)


def _annotation_summary(ann: dict | None) -> str:
    if ann is None:
        return "This version holds raw data only (no annotations)."
    return (
        "Each step also has two machine-generated captions (semantic: what is where; motion: who "
        f"moves how), their text embeddings (`{ann.get('text_encoder', 'unknown')}`, "
        f"{ann.get('embedding_dim', '?')}-d) and ego-motion targets."
    )


def _annotation_section(ann: dict | None) -> str:
    if ann is None:
        return "This version has no annotations; `semore-annotate` adds them (published as a new version)."
    rows = [
        ("captioner", f"`{ann.get('captioner', 'not recorded')}`"),
        ("text encoder", f"`{ann.get('text_encoder', 'not recorded')}`"),
        ("embedding dim", ann.get("embedding_dim", "not recorded")),
        ("command", f"`{ann.get('command', 'not recorded')}`"),
        ("config hash", f"`{ann.get('config_hash', 'not recorded')}`"),
        ("git revision", f"`{ann.get('git_revision') or 'not recorded'}`"),
    ]
    parts = [_table(("", ""), rows)]
    prompts = ann.get("prompts") or {}
    parts.append(
        "Prompts (sha256 of each prompt text):\n\n"
        + _table(
            ("prompt", "sha256"),
            [(name, f"`{digest}`") for name, digest in sorted(prompts.items())],
        )
        if prompts
        else "The captioner uses no prompts."
    )
    targets = _motion_targets(ann)
    parts.append(
        "Ego-motion targets (`motion.npy`, in this order):\n\n"
        + _table(("index", "name", "unit"), [(i, n, u) for i, (n, u) in enumerate(targets)])
    )
    if ann.get("config"):
        parts.append(
            "Resolved annotation config:\n\n```yaml\n"
            + yaml.safe_dump(ann["config"], sort_keys=True).rstrip()
            + "\n```"
        )
    return "\n\n".join(parts)


def _counts_table(raw: dict, ann: dict | None) -> str:
    def count(totals: dict | None, name: str) -> object:
        if totals is None:
            return "-"
        if name == "num_episodes" and totals.get("num_shards") == raw.get("num_shards"):
            # annotation shards carry sample counts only; a full annotation covers every episode
            return totals.get(name, raw.get(name, "-"))
        return totals.get(name, "-")

    rows = [
        (label, count(raw, name), count(ann, name))
        for label, name in (
            ("shards", "num_shards"),
            ("episodes", "num_episodes"),
            ("samples", "num_samples"),
        )
    ]
    parts = [_table(("", "raw", "annotations"), rows)]
    episodes = max(int(raw.get("num_episodes", 0)), 1)
    stats = []
    if "return_sum" in raw:
        stats.append(
            (
                "return (sum over steps)",
                f"{raw['return_sum']:.2f} total, {raw['return_sum'] / episodes:.2f} per episode",
            )
        )
    if "distance_m" in raw:
        stats.append(
            (
                "distance driven",
                f"{raw['distance_m'] / 1000:.3f} km total, {raw['distance_m'] / episodes:.1f} m per episode",
            )
        )
    if "collisions" in raw:
        stats.append(
            (
                "collisions (steps ending in one)",
                f"{raw['collisions']} total, {raw['collisions'] / episodes:.2f} per episode",
            )
        )
    if "expert_steps" in raw:
        share = raw["expert_steps"] / max(int(raw.get("num_samples", 0)), 1)
        stats.append(
            ("steps taken by the expert policy", f"{raw['expert_steps']} ({100 * share:.1f}%)")
        )
    known = {
        "num_shards",
        "num_episodes",
        "num_samples",
        "return_sum",
        "distance_m",
        "collisions",
        "expert_steps",
    }
    stats += [(f"raw `{k}`", v) for k, v in sorted(raw.items()) if k not in known]
    stats += [(f"annotation `{k}`", v) for k, v in sorted((ann or {}).items()) if k not in known]
    if stats:
        parts.append(_table(("total", "value"), stats))
    return "\n\n".join(parts)


def _extra_limits(raw: dict, totals: dict) -> str:
    limits = []
    if int(totals.get("num_episodes", 0)) < 20:
        limits.append(
            f"- Small: {totals.get('num_episodes', 0)} episodes; a demo or smoke-test set, not a benchmark."
        )
    if not raw.get("git_revision"):
        limits.append(
            "- The producing git revision was not recorded (the collector ran outside a git checkout)."
        )
    return "\n".join(limits)
