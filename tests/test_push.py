"""`semore-push`: validation, local export loadable by `datasets`, mocked Hub upload, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import httpx2
import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.share import card as cards
from pipeline.share import push
from pipeline.share.run import main as push_main
from tests import conftest
from tests.synthetic_ann import semantic_caption, write_synthetic_ann

REPO_ID = "semore/syn-test-v1"
EXPECTED_FILES = {
    "manifest.json",
    "README.md",
    "raw/raw-000000.tar",
    "raw/raw-000001.tar",
    "ann/ann-000000.tar",
    "ann/ann-000001.tar",
}


@pytest.fixture
def full_dataset(raw_dataset: Path) -> Path:
    """The synthetic raw dataset plus aligned annotation shards and leftovers of a killed run."""
    write_synthetic_ann(raw_dataset, embedding_dim=8)
    (raw_dataset / "raw" / ".raw-000002.tar.tmp-4242").write_bytes(b"partial")
    (raw_dataset / "ann" / ".ann-000002.tar.tmp-4242").write_bytes(b"partial")
    return raw_dataset


@pytest.fixture
def no_cached_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


class FakeHub:
    """Records HfApi calls; `upload_folder` filters files exactly like huggingface_hub does."""

    def __init__(self, monkeypatch, fail_status: int | None = None, offline: bool = False):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, Path] = {}
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kwargs}))
            if offline:
                raise httpx2.ConnectError("[Errno -2] Name or service not known")
            if fail_status is not None:
                request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
                response = httpx2.Response(fail_status, request=request)
                raise HfHubHTTPError(
                    f"{fail_status} Client Error\nInvalid credentials", response=response
                )
            return f"https://huggingface.co/datasets/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(
            api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs
        ):
            hub.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
            folder = Path(folder_path)
            local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
            ignore = (
                list(ignore_patterns or []) + huggingface_hub.utils._paths.DEFAULT_IGNORE_PATTERNS
            )
            for rel in filter_repo_objects(
                local, allow_patterns=allow_patterns, ignore_patterns=ignore
            ):
                hub.uploaded[rel] = local[rel]
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/abc",
                commit_message=kwargs.get("commit_message", ""),
                commit_description="",
                oid="abc",
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_local_export_loads_with_datasets(full_dataset, tmp_path, capsys):
    out = tmp_path / "export"
    assert (
        push_main(["--data", str(full_dataset), "--repo-id", REPO_ID, "--local-dir", str(out)]) == 0
    )
    exported = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert exported == EXPECTED_FILES
    assert (out / "README.md").read_text() == (full_dataset / "README.md").read_text()
    cache = str(tmp_path / "cache")
    raw = datasets.load_dataset(str(out), cache_dir=cache)  # default config: raw, from the card
    assert raw["train"].num_rows == 24
    assert raw["train"][7]["state.json"]["lane_index"] == 1
    ann = datasets.load_dataset(str(out), "annotations", split="train", cache_dir=cache)
    assert ann.num_rows == 24 and ann["__key__"] == raw["train"]["__key__"]
    assert ann[0]["caption_sem.txt"] == semantic_caption(conftest.synthetic_state(0, 0, 0.2))
    plain = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(out / "raw" / "*.tar")},
        split="train",
        cache_dir=cache,
    )
    assert plain.num_rows == 24
    # a rerun skips identical files and leaves the layout unchanged
    assert (
        push_main(["--data", str(full_dataset), "--repo-id", REPO_ID, "--local-dir", str(out)]) == 0
    )


def test_export_loads_when_state_fields_start_null(monkeypatch, tmp_path):
    """datasets' WebDataset reader guesses types from 5 samples; the card's features fix that."""

    def no_lead_at_first(episode, step, dt_s):
        state = original(episode, step, dt_s)
        if episode == 0:
            state["lead_distance_m"] = state["lead_closing_speed_mps"] = None
        return state

    original = conftest.synthetic_state
    monkeypatch.setattr(conftest, "synthetic_state", no_lead_at_first)
    data = conftest.write_synthetic_raw(tmp_path / "data", steps_per_episode=8)
    out = tmp_path / "export"
    push.push(data, REPO_ID, local_dir=out)
    cache = str(tmp_path / "cache")
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    leads = [s["lead_distance_m"] for s in loaded["state.json"]]
    assert loaded.num_rows == 32 and leads[0] is None and isinstance(leads[-1], float)
    # plain webdataset loading needs the declared features (as the card explains)
    features = datasets.load_dataset_builder(str(out), "raw", cache_dir=cache).info.features
    assert features == cards.infer_features(sorted((data / "raw").glob("*.tar")))
    files = {"train": str(out / "raw" / "*.tar")}
    plain = datasets.load_dataset(
        "webdataset", data_files=files, features=features, split="train", cache_dir=cache
    )
    assert plain["__key__"] == loaded["__key__"]


def test_upload_sends_listed_files_to_repo_paths(full_dataset, monkeypatch, no_cached_token):
    (full_dataset / "raw" / "raw-000009.tar").write_bytes(b"not in the manifest")
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    hub = FakeHub(monkeypatch)
    argv = ["--data", str(full_dataset), "--repo-id", REPO_ID, "--private", "--revision", "v1-test"]
    assert push_main(argv) == 0
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    create = hub.calls[0][1]
    assert (
        create["repo_type"] == "dataset"
        and create["private"] is True
        and create["exist_ok"] is True
    )
    assert create["token"] == "hf_env_token"
    assert hub.calls[1][1]["branch"] == "v1-test"
    upload = hub.calls[2][1]
    assert upload["repo_type"] == "dataset" and upload["revision"] == "v1-test"
    assert set(hub.uploaded) == EXPECTED_FILES
    for rel, path in hub.uploaded.items():
        assert path == full_dataset / rel
    assert 'revision="v1-test"' in (full_dataset / "README.md").read_text()


def test_upload_to_main_creates_no_branch_and_prefers_token_flag(full_dataset, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    hub = FakeHub(monkeypatch)
    assert push_main(["--data", str(full_dataset), "--repo-id", REPO_ID, "--token", "hf_flag"]) == 0
    assert hub.names() == ["create_repo", "upload_folder"]
    assert hub.calls[0][1]["token"] == "hf_flag" and hub.calls[0][1]["private"] is None


def test_missing_token_is_a_one_line_error(full_dataset, monkeypatch, no_cached_token, capsys):
    hub = FakeHub(monkeypatch)
    assert push_main(["--data", str(full_dataset), "--repo-id", REPO_ID]) == 2
    assert _error_line(capsys) == f"semore-push: error: {push.NO_TOKEN}"
    assert hub.calls == []


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_token_is_a_one_line_error(full_dataset, monkeypatch, capsys, status):
    hub = FakeHub(monkeypatch, fail_status=status)
    assert push_main(["--data", str(full_dataset), "--repo-id", REPO_ID, "--token", "hf_bad"]) == 2
    line = _error_line(capsys)
    assert f"rejected the token for {REPO_ID} (HTTP {status})" in line
    assert hub.names() == ["create_repo"] and hub.uploaded == {}


def test_unreachable_hub_is_a_one_line_error(full_dataset, monkeypatch, capsys):
    FakeHub(monkeypatch, offline=True)
    assert push_main(["--data", str(full_dataset), "--repo-id", REPO_ID, "--token", "hf_x"]) == 2
    assert "cannot reach the Hugging Face Hub (ConnectError" in _error_line(capsys)


def test_incomplete_annotation_is_refused(full_dataset, capsys):
    manifest = json.loads((full_dataset / "manifest.json").read_text())
    del manifest["ann"]["shards"]["ann-000001.tar"]
    manifest["ann"]["totals"] = mf.totals(manifest["ann"]["shards"])
    (full_dataset / "manifest.json").write_text(json.dumps(manifest))
    code = push_main(
        [
            "--data",
            str(full_dataset),
            "--repo-id",
            REPO_ID,
            "--local-dir",
            str(full_dataset.parent / "o"),
        ]
    )
    assert code == 2
    assert "lists 1 of 2 annotation shards (first missing: ann/ann-000001.tar)" in _error_line(
        capsys
    )


def test_truncated_shard_is_refused(raw_dataset, tmp_path, capsys):
    shard = raw_dataset / "raw" / "raw-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    assert (
        push_main(
            ["--data", str(raw_dataset), "--repo-id", REPO_ID, "--local-dir", str(tmp_path / "o")]
        )
        == 2
    )
    assert "raw-000001.tar is corrupt or truncated" in _error_line(capsys)


def test_unversioned_repo_id_is_refused(raw_dataset, tmp_path, capsys):
    assert (
        push_main(
            [
                "--data",
                str(raw_dataset),
                "--repo-id",
                "semore/syn",
                "--local-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "expected ORG/NAME-vN" in _error_line(capsys)


def test_local_dir_with_foreign_shards_is_refused(raw_dataset, tmp_path, capsys):
    out = tmp_path / "export"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "raw-000007.tar").write_bytes(b"x")
    assert (
        push_main(["--data", str(raw_dataset), "--repo-id", REPO_ID, "--local-dir", str(out)]) == 2
    )
    assert "holds raw/raw-000007.tar, which this dataset does not publish" in _error_line(capsys)


def test_release_copies_the_card_and_keeps_released_cards_immutable(raw_dataset, tmp_path, capsys):
    cards_dir = tmp_path / "datasets_cards"
    argv = ["--data", str(raw_dataset), "--repo-id", REPO_ID, "--local-dir", str(tmp_path / "o")]
    argv += ["--release", "--cards-dir", str(cards_dir)]
    assert push_main(argv) == 0
    released = cards_dir / "syn-test-v1.md"
    assert released.read_text() == (raw_dataset / schema.CARD_NAME).read_text()
    assert push_main(argv) == 0  # same data, same card: idempotent
    manifest = json.loads((raw_dataset / "manifest.json").read_text())
    manifest["raw"]["seed"] = 7
    (raw_dataset / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "o" / "manifest.json").unlink()
    capsys.readouterr()
    assert push_main(argv) == 2
    assert not (tmp_path / "o" / "manifest.json").exists()  # refused before publishing anything
    assert "a released version is immutable; publish semore/syn-test-v2" in _error_line(capsys)
