"""Dataset cards: template copy, Hub metadata, configs/features that `datasets` understands."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs, known_task_ids
from huggingface_hub import DatasetCard

from pipeline.errors import SemoreError
from pipeline.share import card as cards
from pipeline.share import metadata
from tests.synthetic_ann import write_synthetic_ann

REPO_ROOT = Path(__file__).resolve().parents[1]
HF_LICENSES = {"cc-by-4.0", "apache-2.0", "mit", "other"}  # the ids these cards may use


def _datasets_resource(name: str) -> object:
    return json.loads(resources.files("datasets.utils.resources").joinpath(name).read_text())


def test_packaged_template_matches_the_repository_template():
    source = (REPO_ROOT / "datasets_cards" / "TEMPLATE.md").read_text()
    fix = "copy datasets_cards/TEMPLATE.md to pipeline/share/card_template.md (the packaged copy)"
    assert (REPO_ROOT / "pipeline" / "share" / cards.TEMPLATE_NAME).read_text() == source, fix
    assert cards.template_text() == source


def test_card_metadata_is_valid_hub_yaml(raw_dataset):
    """`card.validate()` needs the network (it posts to the Hub), so the YAML is checked
    here against the value lists `datasets` ships and the fields the Hub requires."""
    write_synthetic_ann(raw_dataset, embedding_dim=8)
    path = cards.write_card(raw_dataset, "semore/highway-quickstart-v1")
    card = DatasetCard.load(path)
    data = card.data
    assert data.license in HF_LICENSES
    assert data.pretty_name == "Semore highway-quickstart v1"
    # "robotics" is a Hub task (huggingface.js pipelines) newer than datasets' frozen list
    assert set(data.task_categories) <= set(known_task_ids) | {"robotics"}
    assert data.size_categories == ["n<1K"]
    assert set(data.size_categories) <= set(_datasets_resource("size_categories.json"))
    assert set(data.annotations_creators) <= set(_datasets_resource("creators.json")["annotations"])
    assert "synthetic" in data.tags and "webdataset" in data.tags
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs.get_default_config_name() == "raw"
    assert configs["raw"]["data_files"] == [{"split": "train", "path": "raw/*.tar"}]
    assert configs["annotations"]["data_files"] == [{"split": "train", "path": "ann/*.tar"}]
    infos = DatasetInfosDict.from_dataset_card_data(data)
    raw_features, ann_features = infos["raw"].features, infos["annotations"].features
    assert type(raw_features["rgb.png"]).__name__ == "Image"
    assert raw_features["state.json"]["lead_distance_m"].dtype == "float64"
    assert ann_features["emb_sem.npy"].feature.dtype == "float32"
    assert ann_features["caption_sem.txt"].dtype == "string"


def test_card_body_records_provenance_models_and_counts(raw_dataset):
    write_synthetic_ann(raw_dataset, embedding_dim=8)
    path = cards.write_card(raw_dataset, "semore/highway-quickstart-v1", revision="v1-test")
    text = path.read_text()
    body = DatasetCard.load(path).text
    assert path == raw_dataset / "README.md"
    for heading in (
        "## How it was produced",
        "## Sample schema",
        "## Annotation models and prompts",
        "## Counts",
        "## Known limits",
    ):
        assert heading in body
    manifest = json.loads((raw_dataset / "manifest.json").read_text())
    for digest in manifest["ann"]["prompts"].values():
        assert digest in body
    assert (
        "| samples | 24 | 24 |" in body
        and "| episodes | 4 | 4 |" in body
        and "| shards | 2 | 2 |" in body
    )
    assert "`scene-v2`" in body and "(8,)" in body and "(32, 32, 3)" in body
    assert 'revision="v1-test"' in body
    assert "${" not in text  # every placeholder was filled


def test_raw_only_card_has_no_annotation_config(raw_dataset):
    manifest = json.loads((raw_dataset / "manifest.json").read_text())
    text = cards.render_card(manifest, "org/raw-only-v3")
    card = DatasetCard(text)
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert list(configs) == ["raw"]
    assert "dataset_info" not in card.data.to_dict()
    assert "this version has no annotations" in card.text


@pytest.mark.parametrize(
    ("num_samples", "label"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1000, "1K<n<10K"),
        (123_456, "100K<n<1M"),
        (10**7, "10M<n<100M"),
        (10**13, "n>1T"),
    ],
)
def test_size_category_uses_hub_bins(num_samples, label):
    assert metadata.size_category(num_samples) == label
    assert label in _datasets_resource("size_categories.json")


def test_dataset_ids_are_versioned():
    ds_id = cards.parse_dataset_id("semore/highway-quickstart-v12")
    assert (ds_id.org, ds_id.name, ds_id.version) == ("semore", "highway-quickstart", 12)
    assert ds_id.card_file_name == "highway-quickstart-v12.md"
    assert str(ds_id) == "semore/highway-quickstart-v12"
    for bad in ("semore/highway", "highway-v1", "semore/highway-v", "a/b--c-v1", "semore/-x-v1"):
        with pytest.raises(SemoreError, match="expected ORG/NAME-vN"):
            cards.parse_dataset_id(bad)


def test_invalid_license_is_refused(raw_dataset):
    manifest = json.loads((raw_dataset / "manifest.json").read_text())
    with pytest.raises(SemoreError, match="license 'CC BY' is invalid"):
        cards.render_card(manifest, "org/x-v1", license="CC BY")
