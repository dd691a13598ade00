"""The built wheel ships the presets and the card template, and an installed copy finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.cli import script_name, stage_name

REPO = Path(__file__).resolve().parents[1]
STAGES = ("collect", "annotate", "pretrain", "compare")  # the stages semore-run configures


def test_wheel_ships_presets_and_an_installed_copy_finds_them(tmp_path: Path):
    # --no-build-isolation: build with this environment's setuptools, no index needed.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("semore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pipeline/presets/quickstart.yaml" in names
    for preset in ("collect", "annotate", "pretrain", "finetune"):
        assert f"pipeline/presets/{preset}/quickstart.yaml" in names
    assert "pipeline/presets/compare/quick.yaml" in names
    assert "pipeline/presets/compare/matched_ent1_20k.yaml" in names  # every study preset
    assert "pipeline/share/card_template.md" in names
    assert "pipeline/annotate/prompts/semantic.txt" in names

    # Install without dependencies into a folder and use it from outside the repository;
    # torch and the rest come from this environment.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    script = (
        "import pipeline, pathlib\n"
        "from pipeline.config import load_config, resolve_config\n"
        "from pipeline.run_all import RunConfig, _flags\n"
        f"assert pathlib.Path(pipeline.__file__).is_relative_to(pathlib.Path(r'{site}'))\n"
        "cfg = load_config(RunConfig, 'quickstart')\n"
        f"for stage in {STAGES!r}:\n"
        "    flags = _flags(getattr(cfg, stage), stage, pathlib.Path.cwd())\n"
        f"    assert pathlib.Path(flags[1]).is_relative_to(pathlib.Path(r'{site}')), flags\n"
        "    assert pathlib.Path(flags[1]).is_file()\n"
        "print(resolve_config('quickstart', 'collect'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("pipeline/presets/collect/quickstart.yaml")


def test_a_stage_modules_console_script_is_the_one_pyproject_installs():
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n")[1]
    lines = section.split("\n\n")[0].splitlines()  # name = "module:main", up to a blank line
    scripts = {k.strip(): v.strip().strip('"') for k, v in (line.split("=") for line in lines)}
    for stage in ("collect", "annotate", "pretrain", "finetune", "compare"):
        module = f"pipeline.{stage}.run"
        assert stage_name(module) == stage
        assert scripts[script_name(module)] == f"{module}:main"
    with pytest.raises(ValueError, match="not a stage's module"):
        stage_name("semore.sac")
