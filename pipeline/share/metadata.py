"""Hub metadata of a dataset: its versioned id, size category, configs and column features."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.data import schema
from pipeline.errors import SemoreError

DEFAULT_LICENSE = "cc-by-4.0"
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# One Hub config per stage: raw shards and annotation shards load separately.
RAW_CONFIG = "raw"
ANN_CONFIG = "annotations"
# Hugging Face size_categories bins (upper bound on the number of samples, label).
SIZE_BINS = (
    (10**3, "n<1K"),
    (10**4, "1K<n<10K"),
    (10**5, "10K<n<100K"),
    (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"),
    (10**9, "100M<n<1B"),
    (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
)

_DATASET_ID = re.compile(
    r"^(?P<org>[A-Za-z0-9][\w.-]*)/(?P<name>[A-Za-z0-9][\w.-]*?)-v(?P<version>\d+)$"
)


@dataclass(frozen=True)
class DatasetId:
    """A versioned dataset id ``ORG/NAME-vN`` (Minari style); it is also the Hub repo id."""

    org: str
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.org}/{self.name}-v{self.version}"

    @property
    def card_file_name(self) -> str:
        """File name of this version's card under ``datasets_cards/``."""
        return f"{self.name}-v{self.version}.md"


def parse_dataset_id(text: str) -> DatasetId:
    """Parse ``ORG/NAME-vN`` or raise a one-line error with an example."""
    match = _DATASET_ID.match(text)
    if match is None or "--" in text or ".." in text or len(text) > 96:
        raise SemoreError(
            f"dataset id {text!r} is invalid: expected ORG/NAME-vN with letters, digits, '-', '_', '.' "
            "(e.g. semore/highway-quickstart-v1)"
        )
    return DatasetId(match["org"], match["name"], int(match["version"]))


def size_category(num_samples: int) -> str:
    """The Hugging Face ``size_categories`` bin of ``num_samples``."""
    for upper, label in SIZE_BINS:
        if num_samples < upper:
            return label
    return "n>1T"


def hub_configs(has_ann: bool) -> list[dict]:
    """The ``configs`` front-matter entries: which shards each Hub config reads."""
    configs = [_config(RAW_CONFIG, f"{schema.RAW_DIR}/*{schema.SHARD_SUFFIX}", default=True)]
    if has_ann:
        configs.append(_config(ANN_CONFIG, f"{schema.ANN_DIR}/*{schema.SHARD_SUFFIX}"))
    return configs


def _config(name: str, pattern: str, default: bool = False) -> dict:
    config = {"config_name": name, "data_files": [{"split": "train", "path": pattern}]}
    if default:
        config["default"] = True
    return config


def infer_features(shards: list[Path]):
    """The ``datasets.Features`` of the samples in ``shards`` (declared in the card).

    ``datasets``' WebDataset reader otherwise guesses types from the first five samples,
    and fails later when a field that was null there (no lead vehicle yet) holds a number.
    Every sample is scanned; fields null everywhere become float64 (state values are numbers).
    Pass the result as ``features=`` to ``load_dataset("webdataset", data_files=...)``.
    """
    import datasets
    import pyarrow as pa
    from datasets.features.features import cast_to_python_objects

    from pipeline.data.shards import decode_member, iter_shard

    arrow_schema = None
    for path in shards:
        rows = []
        for sample in iter_shard(path, decode=False):
            key = sample.pop("__key__")
            row = {
                n: None if n.endswith(".png") else decode_member(n, v) for n, v in sample.items()
            }
            rows.append({**row, "__key__": key, "__url__": ""})
        names = list(dict.fromkeys(name for row in rows for name in row))
        rows = [{name: row.get(name) for name in names} for row in rows]
        table = pa.Table.from_pylist(cast_to_python_objects(rows, only_1d_for_numpy=True))
        arrow_schema = (
            table.schema
            if arrow_schema is None
            else pa.unify_schemas([arrow_schema, table.schema], promote_options="permissive")
        )
    arrow_schema = pa.schema([f.with_type(_nulls_to_float(f.type)) for f in arrow_schema])
    features = datasets.Features.from_arrow_schema(arrow_schema)
    for name in features:
        if name.endswith(".png"):
            features[name] = datasets.Image()
    return features


def _nulls_to_float(dtype):
    import pyarrow as pa

    if pa.types.is_null(dtype):
        return pa.float64()
    if pa.types.is_struct(dtype):
        return pa.struct([f.with_type(_nulls_to_float(f.type)) for f in dtype])
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return pa.list_(_nulls_to_float(dtype.value_type))
    return dtype


def check_license(license: str) -> str:
    """A Hub license id (plain YAML scalar), e.g. cc-by-4.0, apache-2.0, other."""
    if not _LICENSE.match(license):
        raise SemoreError(
            f"license {license!r} is invalid: expected a Hub license id such as cc-by-4.0"
        )
    return license


def backend_name(raw: dict) -> str:
    """The simulator backend a raw manifest section records."""
    return str(raw.get("backend", "unknown"))


def hub_front_matter(
    raw: dict, has_ann: bool, ds_id: DatasetId, features: dict[str, list] | None, license: str
) -> dict:
    """The card's front-matter values: what the Hub indexes and how it loads the configs
    (``features``: YAML features list per config, or None to let ``datasets`` guess)."""
    front = {"configs": hub_configs(has_ann)}
    if features:
        front["dataset_info"] = [
            {"config_name": name, "features": feats} for name, feats in features.items()
        ]
    backend = backend_name(raw)
    return {
        "license": check_license(license),
        "pretty_name": f"Semore {ds_id.name} v{ds_id.version}",
        "backend_tag": re.sub(r"[^a-z0-9-]+", "-", backend.lower()).strip("-") or "unknown",
        "size_category": size_category(int(raw.get("totals", {}).get("num_samples", 0))),
        "configs_yaml": yaml.safe_dump(front, sort_keys=False).rstrip(),
    }
