"""`semore-inspect`: the HTML page holds every requested step with embedded frames; contact sheet."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
from PIL import Image

from pipeline.data import dataset, schema
from pipeline.data import manifest as mf
from pipeline.data.shards import AtomicShardWriter
from pipeline.inspect import page as inspect_data
from pipeline.inspect.run import main as inspect_main
from tests.conftest import synthetic_state
from tests.synthetic_ann import semantic_caption, write_synthetic_ann

TILE = 96  # 32-px synthetic frames are upscaled x3 to reach MIN_TILE_PX
PAD, LABEL = inspect_data.PAD_PX, inspect_data.LABEL_PX


def _steps(page: str) -> list[tuple[int, int]]:
    return [
        (int(e), int(s))
        for e, s in re.findall(
            r'class="step[^"]*"[^>]*data-episode="(\d+)" data-step="(\d+)"', page
        )
    ]


def _sheet_size(columns: int, rows: int) -> tuple[int, int]:
    return columns * TILE + (columns + 1) * PAD, rows * (TILE + LABEL) + (rows + 1) * PAD


def test_page_and_sheet_hold_every_requested_step(raw_dataset, tmp_path):
    write_synthetic_ann(raw_dataset, embedding_dim=8)
    page, sheet = tmp_path / "page.html", tmp_path / "sheet.png"
    argv = [
        "--data",
        str(raw_dataset),
        "--out",
        str(page),
        "--episodes",
        "3",
        "1",
        "--max-steps",
        "4",
    ]
    assert inspect_main([*argv, "--png", str(sheet)]) == 0
    text = page.read_text()
    assert _steps(text) == [(3, s) for s in range(4)] + [(1, s) for s in range(4)]
    for episode in (1, 3):
        for step in range(4):
            assert f'id="{schema.make_key("syn", 0, episode, step)}"' in text
    assert text.count('src="data:image/png;base64,') == 8
    state = synthetic_state(1, 2, 0.2)
    assert html.escape(semantic_caption(state)) in text and "The ego car drives" in text
    assert "acceleration +0.909" in text  # sin(2) of the synthetic action at step 2
    assert "4 of 6 steps" in text and "collision" in text and "syn" in text
    # the embedded frame is the recorded one: episode 3, step 0
    first = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(first))))
    assert frame.shape == (32, 32, 3) and frame[-1, -1, 0] == (3 * 37) % 256
    with Image.open(sheet) as image:
        assert image.size == _sheet_size(columns=4, rows=2)


def test_defaults_show_first_two_episodes_without_captions(raw_dataset, tmp_path):
    page = inspect_data.render_html(raw_dataset, tmp_path / "page.html")
    text = page.read_text()
    assert _steps(text) == [(0, s) for s in range(6)] + [(1, s) for s in range(6)]
    assert 'class="caption' not in text
    assert '<div class="step collision"' in text  # episode 1, step 5 hit something
    assert "<h1>" in text and "episodes / samples / shards" in text and "4 / 24 / 2" in text


def test_render_contact_sheet_api(raw_dataset, tmp_path):
    out = inspect_data.render_contact_sheet(
        raw_dataset, tmp_path / "sub" / "sheet.png", [2], max_steps=3
    )
    with Image.open(out) as image:
        assert image.size == _sheet_size(columns=3, rows=1)
        pixels = np.asarray(image.convert("RGB"))
    # the first tile is episode 2, step 0, upscaled x3
    assert tuple(pixels[PAD + TILE - 1, PAD + 1]) == ((2 * 37) % 256,) * 3


def test_unknown_episode_lists_the_available_ones(raw_dataset, tmp_path, capsys):
    argv = ["--data", str(raw_dataset), "--out", str(tmp_path / "p.html"), "--episodes", "1", "9"]
    assert inspect_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"semore-inspect: error: episode 9 is not in {raw_dataset}: available episodes are 0-3"
    ]
    assert not (tmp_path / "p.html").exists()


def test_dataset_without_raw_section_is_a_one_line_error(tmp_path, capsys):
    mf.write_manifest(tmp_path, mf.new_manifest())
    assert inspect_main(["--data", str(tmp_path), "--out", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no 'raw' section: run semore-collect first" in err[0]


def test_every_camera_is_shown(tmp_path):
    root = tmp_path / "cams"
    root.mkdir()
    manifest = mf.new_manifest()
    manifest["raw"] = {
        "backend": "carla",
        "run": "cam",
        "action_names": ["steer", "throttle_brake"],
        "shards": {},
    }
    mf.write_manifest(root, manifest)
    name = schema.shard_name(schema.RAW_PREFIX, 0)
    with AtomicShardWriter(root / schema.RAW_DIR / name) as writer:
        for step in range(3):
            frames = {
                cam: np.full((8, 8, 3), 40 * i, np.uint8)
                for i, cam in enumerate(("rgb", "left", "front"))
            }
            info = dataset.step_info(0, step, step == 2, False, step == 2, 5, "expert")
            members = dataset.raw_members(
                frames, np.zeros(2, np.float32), 0.5, synthetic_state(0, step, 0.05), info
            )
            writer.write(schema.make_key("cam", 0, 0, step), members)
    dataset.record_shard(root, "raw", name, {"num_samples": 3, "num_episodes": 1, "episodes": [0]})
    text = inspect_data.render_html(root, tmp_path / "p.html").read_text()
    assert len(_steps(text)) == 3
    assert text.count('src="data:image/png;base64,') == 9
    assert text.count("<figcaption>cam_left</figcaption>") == 3 and "steer +0.000" in text
    out = inspect_data.render_contact_sheet(root, tmp_path / "s.png")
    with Image.open(out) as image:
        assert image.size == (3 * TILE + 4 * PAD, TILE + LABEL + 2 * PAD)
