"""``--data hf://datasets/ORG/NAME[@REVISION]``: manifest via hf_hub_download, shards streamed.

The Hub is mocked: ``huggingface_hub.hf_hub_download`` returns a local manifest and
``pipeline.shards.open_remote`` opens the local file an ``hf://`` URL names.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import fsspec
import huggingface_hub
import pytest
import torch
from huggingface_hub import HfFileSystem
from huggingface_hub.errors import RepositoryNotFoundError

from pipeline.data import shards, source
from pipeline.errors import SemoreError
from pipeline.pretrain import run as pretrain
from pipeline.pretrain.config import DataConfig
from pipeline.pretrain.datamodule import SemoreDataModule
from pipeline.pretrain.probe import extract_features, random_encoder
from semore.encoder import load_encoder_metadata
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import write_synthetic_ann
from tests.test_pretrain import CONFIG, TINY

REPO = "org/name"


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 episodes x 6 steps in 2 raw + 2 annotation shards."""
    root = write_synthetic_raw(tmp_path_factory.mktemp("remote") / "data")
    return write_synthetic_ann(root, embedding_dim=16)


@pytest.fixture
def hub(local_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Serve ``local_dataset`` as the Hub dataset repo org/name (any revision)."""
    record = SimpleNamespace(root=local_dataset, revisions=[], opened=[], truncate=None)

    def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None):
        if repo_id != REPO:
            response = SimpleNamespace(headers={}, request=None)
            raise RepositoryNotFoundError(f"404 Repository Not Found: {repo_id}", response=response)
        assert (filename, repo_type) == ("manifest.json", "dataset")
        record.revisions.append(revision)
        return str(local_dataset / filename)

    def open_remote(url: str):
        assert url.startswith(f"hf://datasets/{REPO}@"), url
        record.opened.append(url)
        relpath = url.split("@", 1)[1].split("/", 1)[1]  # raw/raw-000000.tar
        data = (local_dataset / relpath).read_bytes()
        return io.BytesIO(record.truncate(data) if record.truncate else data)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(shards, "open_remote", open_remote)
    return record


def test_shard_urls_are_hub_urls_paired_like_the_local_folder(hub):
    local = source.shard_urls(hub.root)
    remote = source.shard_urls(f"hf://datasets/{REPO}")
    base = f"hf://datasets/{REPO}@main"
    assert remote == [
        (f"{base}/raw/raw-000000.tar", f"{base}/ann/ann-000000.tar"),
        (f"{base}/raw/raw-000001.tar", f"{base}/ann/ann-000001.tar"),
    ]
    assert [(Path(r).name, Path(a).name) for r, a in local] == [
        (r.rsplit("/", 1)[1], a.rsplit("/", 1)[1]) for r, a in remote
    ]
    assert source.shard_urls(f"hf://datasets/{REPO}", with_ann=False) == [
        (raw, None) for raw, _ in remote
    ]
    # A revision is passed to the Hub and kept, quoted, in the shard URLs; argparse's
    # type=Path collapses "hf://" to "hf:/", which reads the same.
    revised = source.shard_urls(Path(f"hf://datasets/{REPO}@refs/pr/1"))
    assert revised[0][0] == f"hf://datasets/{REPO}@refs%2Fpr%2F1/raw/raw-000000.tar"
    assert hub.revisions[-1] == "refs/pr/1"

    info = source.read_dataset_info(f"hf://datasets/{REPO}@v1")
    local_info = source.read_dataset_info(hub.root)
    assert info.root == f"hf://datasets/{REPO}@v1" and hub.revisions[-1] == "v1"
    assert (info.image_height, info.image_width, info.action_dim, info.embedding_dim) == (
        local_info.image_height,
        local_info.image_width,
        local_info.action_dim,
        local_info.embedding_dim,
    )
    assert info.dataset_id()["manifest_sha256"] == local_info.dataset_id()["manifest_sha256"]


def test_streamed_samples_and_batches_equal_the_local_folder(hub):
    def samples(data) -> list:
        return [
            pair for raw, ann in source.shard_urls(data) for pair in source.iter_pairs(raw, ann)
        ]

    remote = samples(f"hf://datasets/{REPO}")
    assert len(hub.opened) == 4  # every shard was streamed through open_remote
    assert remote == samples(hub.root) and len(remote) == 24

    cfg = DataConfig(batch_size=4, frame_stack=3, num_workers=0, shuffle_buffer=8)
    batches = [
        list(SemoreDataModule(data, cfg, seed=0).train_dataloader())
        for data in (hub.root, f"hf://datasets/{REPO}")
    ]
    assert len(batches[0]) == len(batches[1]) == 18 // 4
    for local_batch, remote_batch in zip(*batches, strict=True):
        assert local_batch.keys() == remote_batch.keys()
        for name, value in local_batch.items():
            assert torch.equal(value, remote_batch[name]), name


def test_probe_features_from_the_hub_equal_the_local_folder(hub):
    encoder = random_encoder(f"hf://datasets/{REPO}")
    remote = extract_features(encoder, f"hf://datasets/{REPO}", frame_stack=3, batch_size=5)
    local = extract_features(encoder, hub.root, frame_stack=3, batch_size=5)
    assert remote.keys() == local.keys()
    for name, value in local.items():
        assert torch.equal(value, remote[name]), name


def test_a_shard_cut_at_a_member_boundary_fails_the_manifest_count(hub):
    def drop_last_sample(data: bytes) -> bytes:
        # Everything up to the last sample's first member: a tar that ends early but cleanly.
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
        last_key = members[-1].name.split(".")[0]
        first_of_last = next(m for m in members if m.name.split(".")[0] == last_key)
        return data[: first_of_last.offset]

    hub.truncate = drop_last_sample
    raw, ann = source.shard_urls(f"hf://datasets/{REPO}")[0]
    with pytest.raises(SemoreError) as err:
        list(source.iter_pairs(raw, ann))
    message = str(err.value)
    assert "\n" not in message and raw in message
    assert "11 samples where the manifest lists 12" in message

    hub.truncate = lambda data: data[:1000]  # mid-member
    with pytest.raises(SemoreError, match="unexpected end of data"):
        list(source.iter_shard_samples(raw))


def test_pretrain_from_the_hub_exports_an_encoder(hub, tmp_path: Path):
    out = tmp_path / "run"
    args = ["--config", str(CONFIG), "--data", f"hf://datasets/{REPO}", "--out", str(out)]
    assert pretrain.main([*args, "--trainer.max_steps", "2", *TINY]) == 0
    assert (out / "encoder.pt").is_file()
    metadata = load_encoder_metadata(out / "encoder.pt")
    assert metadata["dataset"]["path"] == f"hf://datasets/{REPO}@main"
    local_id = source.read_dataset_info(hub.root).dataset_id()
    assert metadata["dataset"]["manifest_sha256"] == local_id["manifest_sha256"]


def test_a_missing_repo_is_a_one_line_error(hub, tmp_path: Path, capsys):
    args = ["--config", str(CONFIG), "--data", "hf://datasets/org/missing", "--out", str(tmp_path)]
    assert pretrain.main([*args, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "org/missing not found on the Hugging Face Hub" in err and "semore-push" in err


def test_offline_without_a_cached_manifest_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SemoreError) as err:
        source.read_dataset_info("hf://datasets/org/semore-test-never-cached")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message
    assert "hf://datasets/org/semore-test-never-cached@main/manifest.json" in message


@pytest.mark.parametrize(
    "data", ["s3://bucket/data", "hf://datasets/org", "hf://models/org/name", "hf:/elsewhere"]
)
def test_other_urls_are_rejected(data: str):
    with pytest.raises(SemoreError, match=r"expected a local dataset folder or hf://datasets/"):
        source.shard_urls(data)


def test_a_wrong_manifest_version_on_the_hub_names_its_url(hub, tmp_path: Path, monkeypatch):
    manifest = json.loads((hub.root / "manifest.json").read_text())
    manifest["format_version"] = 999
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: str(tmp_path / "manifest.json")
    )
    with pytest.raises(SemoreError, match=rf"hf://datasets/{REPO}@main/manifest.json has format"):
        source.read_dataset_info(f"hf://datasets/{REPO}")


def test_open_remote_streams_hf_urls_through_huggingface_hubs_filesystem(
    local_dataset: Path, monkeypatch
):
    assert fsspec.get_filesystem_class("hf") is HfFileSystem
    opened = []

    def fake_open(self, path, mode="rb", block_size=None, **kwargs):
        opened.append((path, mode, block_size))
        return open(local_dataset / path.split("@main/", 1)[1], "rb")

    monkeypatch.setattr(HfFileSystem, "_open", fake_open)
    url = f"hf://datasets/{REPO}@main/raw/raw-000000.tar"
    samples = list(shards.iter_shard(url, decode=False, num_samples=12))
    assert [s["__key__"] for s in samples] == [
        s["__key__"] for s in shards.iter_shard(local_dataset / "raw" / "raw-000000.tar")
    ]
    # block_size=0: HfFileSystem's streaming file (one GET), not ranged block reads.
    assert opened == [(f"datasets/{REPO}@main/raw/raw-000000.tar", "rb", 0)]


def test_an_unreachable_hub_shard_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    url = "hf://datasets/org/semore-test-never-cached@main/raw/raw-000000.tar"
    with pytest.raises(SemoreError) as err:
        list(shards.iter_shard(url, num_samples=12))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"shard {url} is unreadable")
    assert "HF_HUB_OFFLINE" in message
