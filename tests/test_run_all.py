"""``semore-run`` end to end on a tiny config: every stage, the report, and resumption."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.pretrain.probe import DEFAULT_HOLDOUT_EVERY, load_probe_encoder, run_probe
from pipeline.run_all import main

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "collect": {
        "config": "quickstart",
        "overrides": {
            "episodes": 4,
            "episodes_per_shard": 2,
            "policy": {"name": "expert"},
            "highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 8},
        },
    },
    "annotate": {"config": "quickstart", "overrides": {"num_threads": 1}},
    "pretrain": {
        "config": "quickstart",
        "overrides": {
            "encoder": {"num_filters": 8, "num_heads": 2},
            "data": {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
            "trainer": {"max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2},
        },
    },
    "compare": {
        "config": "quick",
        "overrides": {
            "seeds": [0, 1],
            "num_train_steps": 12,
            "eval_every_steps": 6,
            "num_eval_episodes": 1,
            "overrides": {
                "env": {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 8}},
                "num_seed_steps": 6,
                "replay_capacity": 200,
                "sac": {"hidden_dim": 16},
            },
        },
    },
    "report_episodes": [0, 1],
    "report_max_steps": 3,
}


def test_whole_pipeline_writes_a_report_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert f"report at {out / 'report.html'}" in capsys.readouterr().out

    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["raw"]["totals"]["num_episodes"] == 4
    assert manifest["ann"]["totals"]["num_samples"] == manifest["raw"]["totals"]["num_samples"]
    encoder = out / "pretrain" / "encoder.pt"
    assert encoder.is_file()
    # Each probe is the probe of its encoder on the run's dataset: the same numbers again.
    results = {}
    for label, spec in (("pretrained", str(encoder)), ("random", "random")):
        results[label] = json.loads((out / f"probe_{label}.json").read_text())
        model, metadata = load_probe_encoder(spec, out / "data", frame_stack=3)
        holdout_every = metadata.get("holdout_every") or DEFAULT_HOLDOUT_EVERY
        again = run_probe(model, out / "data", holdout_every=holdout_every)
        assert results[label]["encoder"] == spec and results[label]["data"] == str(out / "data")
        again = json.loads(json.dumps(again))  # as the file holds it (tuples as lists)
        for key in ("r2", "r2_interval", "alpha", "heldout_episodes", "num_heldout_samples"):
            assert results[label][key] == again[key], (label, key)
        assert results[label]["heldout_episodes"] == [3]  # episode % 4 == 3 of 0-3
    assert results["pretrained"]["r2"] != results["random"]["r2"]
    runs = out / "compare" / "runs"
    for arm in ("semore_frozen", "random_frozen"):
        for seed in (0, 1):
            summary = json.loads((runs / arm / f"seed{seed}" / "summary.json").read_text())
            assert summary["step"] == 12
            # every arm has the pretrained architecture
            assert summary["encoder_config"]["num_filters"] == 8
    assert (out / "compare" / "report" / "table.md").is_file()

    page = (out / "report.html").read_text()
    # 2 episodes x 3 example frames, the contact sheet, the study's curves
    assert page.count("data:image/png;base64,") == 2 * 3 + 2
    assert "semantic:" in page and "motion:" in page  # captions beside the frames
    assert "95% interval" in page and "RL-trained" not in page  # frozen arms: RL changed no encoder
    assert not (out / "probe_rl-trained.json").exists()
    assert "| semore_frozen |" not in page and "<td>semore_frozen</td>" in page
    assert (out / "contact_sheet.png").is_file()

    # a rerun finds every stage complete and redoes none of them
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".html"
    }
    assert main(["--config", str(config), "--out", str(out), "--quiet"]) == 0
    changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert [p.name for p in changed if p.suffix in (".tar", ".pt", ".json", ".csv")] == []


def test_a_failing_stage_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "bad.yaml"
    bad = dict(TINY, collect={"config": "quickstart", "overrides": {"episodes": 0}})
    config.write_text(yaml.safe_dump(bad))
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("semore-run: error: stage collect failed")
    assert not (tmp_path / "run" / "pretrain").exists()
