"""Datasets from strangers: manifests and shards crafted to lie are refused by every reader.

Each case edits a copy of a small annotated dataset, runs the readers through their
``main(argv)`` and checks the one-line error (file, field, value, what was expected), the
exit code, that no traceback is printed, and that nothing was written: not in the dataset
folder, not where the command would have written its output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.annotate.annotator import Annotator
from pipeline.annotate.config import AnnotateConfig
from pipeline.annotate.run import annotate
from pipeline.annotate.run import main as annotate_main
from pipeline.annotate.scene import SceneCaptioner
from pipeline.collect.run import main as collect_main
from pipeline.data import manifest as mf
from pipeline.data import schema
from pipeline.data.shards import AtomicShardWriter, iter_shard
from pipeline.errors import SemoreError
from pipeline.inspect.run import main as inspect_main
from pipeline.pretrain.probe import main as probe_main
from pipeline.pretrain.run import main as pretrain_main
from pipeline.share.run import main as push_main
from tests.conftest import write_synthetic_raw
from tests.synthetic_ann import HashTextEncoder, write_synthetic_ann

SHARD0 = "raw-000000.tar"
EMB_DIM = 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 episodes x 6 steps in 2 raw shards, annotated, with a lock file and a temporary
    shard of a live writer in it (neither is data: the checks must let them be)."""
    root = write_synthetic_raw(tmp_path_factory.mktemp("hostile") / "data")
    write_synthetic_ann(root, embedding_dim=EMB_DIM)
    (root / ".lock").write_text("4242 host 2026-01-01T00:00:00\n")
    (root / schema.RAW_DIR / ".raw-000002.tar.tmp-4242").write_bytes(b"partial")
    return root


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def edit_manifest(root: Path, edit) -> None:
    path = root / schema.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def one_line_error(capsys, prog: str) -> str:
    """The command's stderr: exactly one line, its error, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: "), err
    return err


def _set_shard(field: str, value: object, shard: str = SHARD0, section: str = "raw"):
    return lambda m: m[section]["shards"][shard].__setitem__(field, value)


def _move_episode(m: dict) -> None:  # episode 0 listed in both raw shards
    m["raw"]["shards"]["raw-000001.tar"]["episodes"] = [0, 3]


# (case, manifest edit, what the error line must say)
MANIFEST_CASES = [
    ("episodes a string", _set_shard("episodes", "0,1,2,3,4"),
     "raw.shards.raw-000000.tar.episodes is '0,1,2,3,4': expected a list"),
    ("num_samples a string", _set_shard("num_samples", "12"),
     "raw.shards.raw-000000.tar.num_samples is '12': expected an int in [0, 1e11]"),
    ("negative num_samples", _set_shard("num_samples", -504), "num_samples is -504: expected an int"),
    ("huge num_samples", _set_shard("num_samples", 10**29), "num_samples is 1e+29: expected an int"),
    ("bool num_episodes", _set_shard("num_episodes", True), "num_episodes is True: expected an int"),
    ("num_episodes against episodes", _set_shard("num_episodes", 3),
     "num_episodes is 3: expected 2, the length of episodes"),
    ("episode in two shards", _move_episode, "an episode in one shard only"),
    ("no shards table", lambda m: m["raw"].pop("shards"), "raw.shards is missing: expected"),
    ("totals against shards", lambda m: m["raw"]["totals"].__setitem__("num_samples", 999),
     "raw.totals.num_samples is 999: expected 24, the sum over its shards"),
    ("shard name with a path", lambda m: m["raw"]["shards"].__setitem__("../evil.tar", {}),
     "raw.shards key is '../evil.tar': expected a shard name raw-NNNNNN.tar"),
    ("image size 0", lambda m: m["raw"].__setitem__("image_height", 0),
     "raw.image_height is 0: expected an int in [1, 4096]"),
    ("NaN step duration", lambda m: m["raw"].__setitem__("step_duration_s", float("nan")),
     "raw.step_duration_s is nan: expected a number in (0, 3600]"),
    ("embedding_dim a string", lambda m: m["ann"].__setitem__("embedding_dim", "8"),
     "ann.embedding_dim is '8': expected an int"),
    ("no embedding_dim", lambda m: m["ann"].pop("embedding_dim"), "ann.embedding_dim is missing"),
    ("ann entry of another raw shard", _set_shard("raw_shard", "raw-000001.tar", "ann-000000.tar", "ann"),
     "raw_shard is 'raw-000001.tar': expected the raw shard of index 0"),
    ("format version a string", lambda m: m.__setitem__("format_version", "2"),
     "has format version '2': expected 2"),
]  # fmt: skip


@pytest.mark.parametrize("case, edit, message", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_semore_inspect_refuses_a_lying_manifest_on_one_line(data, capsys, case, edit, message):
    edit_manifest(data, edit)
    before = snapshot(data)
    page = data.parent / "page.html"
    assert inspect_main(["--data", str(data), "--out", str(page)]) == 2
    line = one_line_error(capsys, "semore-inspect")
    assert str(data / schema.MANIFEST_NAME) in line and message in line
    assert snapshot(data) == before and not page.exists()


def _readers(data: Path, out: Path) -> dict:
    """Every command that reads a dataset, writing (if it got that far) under ``out``."""
    return {
        "semore-inspect": (inspect_main, ["--data", str(data), "--out", str(out / "page.html")]),
        "semore-annotate": (annotate_main, ["--data", str(data)]),  # a resume of the same config
        "semore-pretrain": (
            pretrain_main,
            ["--config", "quickstart", "--data", str(data), "--out", str(out / "run")],
        ),
        "semore-probe": (
            probe_main,
            ["--encoder", "random", "--data", str(data), "--out", str(out / "probe.json")],
        ),
        "semore-push": (
            push_main,
            ["--data", str(data), "--repo-id", "org/data-v1", "--local-dir", str(out / "hub")],
        ),
        "semore-collect": (collect_main, ["--config", "quickstart", "--out", str(data)]),
    }


@pytest.mark.parametrize("case", [0, 1, 2], ids=["episodes str", "num_samples str", "negative"])
def test_every_reader_refuses_and_writes_nothing(data, tmp_path, capsys, case):
    _, edit, message = MANIFEST_CASES[case]
    edit_manifest(data, edit)
    before = snapshot(data)
    out = tmp_path / "out"
    for prog, (main, argv) in _readers(data, out).items():
        assert main([*argv, "--quiet"]) == 2, prog
        assert message in one_line_error(capsys, prog), prog
        assert snapshot(data) == before, prog
        assert not out.exists(), prog


def test_a_number_past_pythons_digit_limit_is_one_line(data, capsys):
    text = (data / schema.MANIFEST_NAME).read_text()
    (data / schema.MANIFEST_NAME).write_text(
        text.replace('"num_samples": 12', '"num_samples": ' + "9" * 5000, 1)
    )
    assert inspect_main(["--data", str(data), "--out", str(data.parent / "p.html")]) == 2
    assert "is not valid JSON (ValueError): expected a manifest" in one_line_error(
        capsys, "semore-inspect"
    )


def test_a_hub_manifest_is_checked_the_same_way():
    url = "hf://datasets/org/data-v1@main/manifest.json"
    manifest = {"format_version": schema.FORMAT_VERSION, "semore_version": "0",
                "raw": {"shards": {SHARD0: {"num_samples": -1, "num_episodes": 0, "episodes": []}}}}  # fmt: skip
    with pytest.raises(SemoreError, match=rf"^{url}: raw.shards.{SHARD0}.num_samples is -1"):
        mf.parse_manifest(json.dumps(manifest).encode(), url)


def _readers_of_shards(data: Path, out: Path) -> dict:
    readers = _readers(data, out)
    del readers["semore-collect"]  # owns raw/: rebuilds an entry from its shard (test_collect)
    return readers


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"num_samples": 11}, "raw-000000.tar holds 12 samples where the manifest lists 11"),
        ({"episodes": [0, 5]}, "raw-000000.tar holds episodes [0, 1] (2) where the manifest lists [0, 5] (2)"),
    ],
)  # fmt: skip
def test_shard_contents_against_the_manifest(data, tmp_path, capsys, entry, message):
    def edit(m: dict) -> None:
        m["raw"]["shards"][SHARD0].update(entry)
        m["raw"]["totals"] = mf.totals(m["raw"]["shards"])  # consistent with itself

    edit_manifest(data, edit)
    before = snapshot(data)
    for prog, (main, argv) in _readers_of_shards(data, tmp_path / "out").items():
        if prog == "semore-annotate":
            continue  # reads raw shards whole and checks each as it goes (test_annotate_run)
        assert main([*argv, "--quiet"]) == 2, prog
        assert message in one_line_error(capsys, prog), prog
        assert snapshot(data) == before and not (tmp_path / "out").exists(), prog


def _rename_keys(path: Path, run: str) -> None:
    """Rewrite a shard with the same members under keys of another run."""
    samples = list(iter_shard(path, decode=False))
    with AtomicShardWriter(path) as writer:
        for sample in samples:
            key = schema.parse_key(sample.pop("__key__"))
            writer.write(schema.make_key(run, key.worker, key.episode, key.step), sample)


def test_annotation_keys_that_do_not_match_their_raw_shard_are_refused(data, tmp_path, capsys):
    _rename_keys(data / schema.ANN_DIR / "ann-000001.tar", run="other")
    before = snapshot(data)
    for prog, (main, argv) in _readers_of_shards(data, tmp_path / "out").items():
        if prog == "semore-probe":
            continue  # reads raw frames only
        assert main([*argv, "--quiet"]) == 2, prog
        line = one_line_error(capsys, prog)
        assert "ann-000001.tar does not match" in line, prog
        assert "annotation key 'other_00_000002_00000' where raw key 'syn_00_000002_00000'" in line
        assert snapshot(data) == before and not (tmp_path / "out").exists(), prog


def test_an_annotation_of_a_rewritten_raw_shard_is_refused_then_redone(data, tmp_path, capsys):
    """A longer collect rewrites a raw shard: its old annotations no longer cover it. Readers
    refuse them; semore-annotate annotates that shard again and keeps the other."""
    raw = data / schema.RAW_DIR / "raw-000001.tar"
    samples = list(iter_shard(raw, decode=False))[:-1]  # the shard now holds one step less
    with AtomicShardWriter(raw) as writer:
        for sample in samples:
            writer.write(sample.pop("__key__"), sample)

    def edit(m: dict) -> None:
        m["raw"]["shards"]["raw-000001.tar"]["num_samples"] = len(samples)
        m["raw"]["totals"] = mf.totals(m["raw"]["shards"])

    edit_manifest(data, edit)
    kept = (data / schema.ANN_DIR / "ann-000000.tar").read_bytes()
    assert inspect_main(["--data", str(data), "--out", str(tmp_path / "p.html")]) == 2
    assert "ann.shards.ann-000001.tar does not annotate its raw shard: it covers 12 samples" in (
        one_line_error(capsys, "semore-inspect")
    )
    cfg = AnnotateConfig()
    annotator = Annotator(cfg, SceneCaptioner(cfg.scene), HashTextEncoder(EMB_DIM))
    manifest = annotate(cfg, data, progress=False, annotator=annotator)
    assert manifest["ann"]["shards"]["ann-000001.tar"]["num_samples"] == len(samples)
    assert (data / schema.ANN_DIR / "ann-000000.tar").read_bytes() == kept
    assert inspect_main(["--data", str(data), "--out", str(tmp_path / "p.html"), "--quiet"]) == 0


def test_lock_and_temporary_files_are_not_data(data, tmp_path):
    """What another writer keeps in the folder (a lock, its shard in progress) is left alone."""
    page = tmp_path / "page.html"
    assert inspect_main(["--data", str(data), "--out", str(page), "--quiet"]) == 0
    assert page.is_file()
    assert (data / ".lock").is_file() and (
        data / schema.RAW_DIR / ".raw-000002.tar.tmp-4242"
    ).is_file()
