"""``semore-annotate`` end to end on synthetic raw datasets: alignment, resume, bad input, workers."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.annotate.run import main
from pipeline.data import schema
from pipeline.data.shards import AtomicShardWriter, iter_shard
from tests.conftest import dead_pid, write_synthetic_raw

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "annotate" / "quickstart.yaml"


def _annotate(root: Path, *extra: str) -> int:
    # One torch thread: tests share a small machine, where more threads only wait on each other.
    return main(
        [
            "--config",
            str(QUICKSTART),
            "--data",
            str(root),
            "--device",
            "cpu",
            "--num_threads",
            "1",
            *extra,
        ]
    )


def _manifest(root: Path) -> dict:
    return json.loads((root / schema.MANIFEST_NAME).read_text())


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))
    }


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("semore-annotate: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_annotations_align_with_raw_shards(raw_dataset, capsys):
    raw_before = _digests(raw_dataset / schema.RAW_DIR)
    assert _annotate(raw_dataset) == 0
    assert _digests(raw_dataset / schema.RAW_DIR) == raw_before  # raw shards are never modified
    assert "24 annotated samples in 2 shards" in capsys.readouterr().out
    manifest = _manifest(raw_dataset)
    section = manifest["ann"]
    assert section["captioner"] == "scene-v2"
    assert section["text_encoder"].startswith("sentence-transformers:all-MiniLM-L6-v2@")
    assert section["embedding_dim"] == 384 and section["prompts"] == {}
    assert section["motion_targets"] == [list(t) for t in schema.MOTION_TARGETS]
    assert section["raw_config_hash"] == manifest["raw"]["config_hash"]
    assert len(section["config_hash"]) == 16 and section["config"]["captioner"] == "scene"

    raw_paths = sorted((raw_dataset / schema.RAW_DIR).glob("raw-*.tar"))
    assert sorted(section["shards"]) == ["ann-000000.tar", "ann-000001.tar"]
    collided = False
    for raw_path in raw_paths:
        ann_path = raw_dataset / schema.ANN_DIR / raw_path.name.replace("raw-", "ann-")
        raw, ann = list(iter_shard(raw_path)), list(iter_shard(ann_path))
        assert [s["__key__"] for s in ann] == [s["__key__"] for s in raw]  # same keys, same order
        captions = set()
        for r, a in zip(raw, ann, strict=True):
            schema.validate_ann_sample(a)
            for member in (schema.EMB_SEM, schema.EMB_MOT):
                assert a[member].dtype == np.float32 and a[member].shape == (384,)
                assert abs(np.linalg.norm(a[member]) - 1.0) < 1e-5
            state = r[schema.STATE]
            expected = [
                state["speed_mps"],
                state["acceleration_mps2"],
                state["yaw_rate_radps"],
                state["lat_speed_mps"],
                state["lateral_offset_m"],
                state["heading_rad"],
            ]
            np.testing.assert_array_equal(a[schema.MOTION], np.asarray(expected, dtype=np.float32))
            step = schema.parse_key(a["__key__"]).step
            assert a[schema.ANN_INFO] == {"captioned_step": step, "sem_flag": "", "mot_flag": ""}
            captions |= {a[schema.CAPTION_SEM], a[schema.CAPTION_MOT]}
            collided |= state["collision"] and "collides" in a[schema.CAPTION_MOT]
        info = section["shards"][ann_path.name]
        assert info["num_samples"] == len(raw) and info["raw_shard"] == raw_path.name
        assert info["caption_lookups"] == 2 * len(raw)
        assert info["encoder_calls"] == len(captions)
        assert info["cache_hits"] == 2 * len(raw) - len(captions)
        assert info["skipped_samples"] == 0 and info["flagged_captions"] == 0
    assert collided  # episode 1, step 5 of the fixture collides
    assert section["totals"]["num_samples"] == 24


def test_rerun_is_idempotent_and_rewrites_a_missing_shard_identically(raw_dataset):
    assert _annotate(raw_dataset) == 0
    ann_dir = raw_dataset / schema.ANN_DIR
    first, manifest = _digests(ann_dir), _manifest(raw_dataset)
    assert _annotate(raw_dataset) == 0  # nothing to do
    assert _digests(ann_dir) == first and _manifest(raw_dataset) == manifest
    (ann_dir / "ann-000001.tar").unlink()
    (ann_dir / f".ann-000000.tar.tmp-{dead_pid()}").write_bytes(b"partial")  # a killed run's
    assert _annotate(raw_dataset) == 0
    assert _digests(ann_dir) == first
    assert not list(ann_dir.glob(".*tmp*"))
    assert _manifest(raw_dataset)["ann"]["shards"] == manifest["ann"]["shards"]


def test_another_config_is_refused_until_ann_is_deleted(raw_dataset, capsys):
    assert _annotate(raw_dataset) == 0
    assert _annotate(raw_dataset, "--scene.distance_step_m", "2") == 2
    line = _error_line(capsys)
    assert "annotations made with another annotate config" in line and "fresh --data copy" in line
    assert _annotate(raw_dataset, "--workers", "1") == 0  # scheduling fields are not the config
    shutil.rmtree(raw_dataset / schema.ANN_DIR)
    assert _annotate(raw_dataset, "--scene.distance_step_m", "2") == 0
    assert _manifest(raw_dataset)["ann"]["config"]["scene"]["distance_step_m"] == 2.0


def _corrupt_header(path: Path, member: int) -> None:
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member].offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 512] = b"Z" * 512
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_raw_shard_stops_or_is_skipped(raw_dataset, capsys, damage):
    bad = raw_dataset / schema.RAW_DIR / "raw-000001.tar"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        _corrupt_header(bad, member=12)  # a header in mid-file: tarfile alone just stops there
    assert _annotate(raw_dataset) == 2
    line = _error_line(capsys)
    # Both a truncated tar and a corrupt header mid-file are reported as a damaged shard.
    assert "raw-000001.tar" in line
    assert "corrupt or truncated" in line and "delete it and rerun" in line
    ann_dir = raw_dataset / schema.ANN_DIR
    assert (ann_dir / "ann-000000.tar").is_file() and not (ann_dir / "ann-000001.tar").exists()
    assert not list(ann_dir.glob(".*tmp*"))

    assert _annotate(raw_dataset, "--skip-bad") == 0
    assert "0 samples and 1 shards skipped" in capsys.readouterr().out
    section = _manifest(raw_dataset)["ann"]
    assert list(section["skipped_shards"]) == ["raw-000001.tar"]
    assert sorted(section["shards"]) == ["ann-000000.tar"]


def test_sample_missing_a_member_stops_or_is_skipped(raw_dataset, capsys):
    path = raw_dataset / schema.RAW_DIR / "raw-000000.tar"
    samples = list(iter_shard(path, decode=False))
    bad_key = samples[3]["__key__"]
    with AtomicShardWriter(path) as writer:
        for sample in samples:
            members = {k: v for k, v in sample.items() if k != "__key__"}
            if sample["__key__"] == bad_key:
                del members[schema.STATE]
            writer.write(sample["__key__"], members)
    assert _annotate(raw_dataset) == 2
    line = _error_line(capsys)
    assert "raw-000000.tar" in line and bad_key in line and "missing state.json" in line

    assert _annotate(raw_dataset, "--skip-bad") == 0
    info = _manifest(raw_dataset)["ann"]["shards"]["ann-000000.tar"]
    assert info["skipped_samples"] == 1 and info["skipped_keys"] == [bad_key]
    keys = [s["__key__"] for s in iter_shard(raw_dataset / schema.ANN_DIR / "ann-000000.tar")]
    assert keys == [s["__key__"] for s in samples if s["__key__"] != bad_key]


def test_format_version_mismatch_is_a_one_line_error(raw_dataset, capsys):
    manifest = _manifest(raw_dataset)
    manifest["format_version"] = 999
    (raw_dataset / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert _annotate(raw_dataset) == 2
    line = _error_line(capsys)
    assert (
        f"format version 999: expected {schema.FORMAT_VERSION}" in line
        and schema.MANIFEST_NAME in line
    )


def test_open_clip_text_encoder_through_the_cli(raw_dataset, tmp_path):
    from tests.test_annotate_text_encoders import build_tiny_clip

    config_json, checkpoint = build_tiny_clip(tmp_path / "clip")
    assert _annotate(raw_dataset, "--text-encoder", "open_clip", "--open_clip.model_name", "TinyCLIP-test",
                     "--open_clip.pretrained", str(checkpoint), "--open_clip.model_config_json", str(config_json)) == 0  # fmt: skip
    section = _manifest(raw_dataset)["ann"]
    assert (
        section["embedding_dim"] == 16
        and section["text_encoder"] == "open_clip:TinyCLIP-test/tiny_clip.pt"
    )
    sample = next(iter_shard(raw_dataset / schema.ANN_DIR / "ann-000000.tar"))
    assert sample[schema.EMB_SEM].shape == (16,)


def test_worker_slices_cover_every_shard_once(tmp_path, monkeypatch):
    whole = write_synthetic_raw(tmp_path / "whole", num_episodes=6, episodes_per_shard=2)
    sliced = tmp_path / "sliced"
    shutil.copytree(whole, sliced)
    assert _annotate(whole) == 0
    assert _annotate(sliced, "--worker-index", "0", "--num-workers", "2") == 0
    assert sorted(_manifest(sliced)["ann"]["shards"]) == ["ann-000000.tar", "ann-000002.tar"]
    monkeypatch.setenv("RANK", "1")  # torch.distributed variables stand in for the flags
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _annotate(sliced) == 0
    assert _digests(sliced / schema.ANN_DIR) == _digests(whole / schema.ANN_DIR)
    assert _manifest(sliced)["ann"]["shards"] == _manifest(whole)["ann"]["shards"]
    assert _annotate(sliced, "--worker-index", "2", "--num-workers", "2") == 2


def test_two_worker_processes_match_one(raw_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(raw_dataset, copy)
    assert _annotate(raw_dataset, "--workers", "1") == 0
    assert _annotate(copy, "--workers", "2") == 0
    assert _digests(copy / schema.ANN_DIR) == _digests(raw_dataset / schema.ANN_DIR)
    assert _manifest(copy)["ann"]["shards"] == _manifest(raw_dataset)["ann"]["shards"]


def test_ann_shards_load_with_webdataset_and_datasets(raw_dataset):
    import datasets
    import webdataset as wds

    assert _annotate(raw_dataset) == 0
    shards = [str(p) for p in sorted((raw_dataset / schema.ANN_DIR).glob("ann-*.tar"))]
    sample = next(iter(wds.WebDataset(shards, shardshuffle=False).decode()))
    assert sample[schema.EMB_SEM].shape == (384,) and sample[schema.ANN_INFO]["captioned_step"] == 0
    cache = str(raw_dataset.parent / "hf-cache")
    table = datasets.load_dataset(
        "webdataset", data_files={"train": shards}, split="train", cache_dir=cache
    )
    assert table.num_rows == 24 and len(table[0][schema.EMB_MOT]) == 384
