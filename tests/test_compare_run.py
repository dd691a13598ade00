"""``semore-compare`` end to end on a tiny study: runs, skip on rerun, results folder."""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path

import torch
import yaml

import pipeline.compare.jobs as compare_jobs
import pipeline.compare.run as compare_run
import pipeline.compare.slurm as compare_slurm
from pipeline.compare.run import main
from pipeline.finetune.eval import read_metrics
from pipeline.finetune.run import main as finetune_main
from pipeline.lock import FolderLock
from semore.encoder import SemoreEncoder, save_encoder

TINY_FINETUNE = {
    "env": {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 8}},
    "encoder": {"num_filters": 8},
    "num_seed_steps": 4,
    "batch_size": 4,
    "replay_capacity": 200,
    "sac": {"hidden_dim": 16},
    "fabric": {"accelerator": "cpu"},
}


def write_study(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    export = tmp_path / "encoder.pt"
    save_encoder(
        export, SemoreEncoder(frame_stack=3, image_height=32, image_width=32, num_filters=8)
    )
    study = {
        "finetune": "quickstart",
        "overrides": TINY_FINETUNE,
        "arms": {
            "scratch": {"encoder": "none", "architecture_from": str(export)},
            "frozen": {"encoder": str(export), "overrides": {"encoder_mode": "frozen"}},
        },
        "seeds": [0, 1],
        "num_train_steps": 8,
        "eval_every_steps": 4,
        "num_eval_episodes": 1,
        "jobs": 2,
        "bootstrap_reps": 200,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_reports_and_skips_finished_runs(tmp_path, capsys):
    study, out = write_study(tmp_path), tmp_path / "out"
    assert main(["--config", str(study), "--out", str(out), "--quiet"]) == 0
    report = out / "report"
    table = (report / "table.md").read_text()
    assert "| scratch | 2 |" in table and "| frozen | 2 |" in table
    assert "Steps to reach scratch's final IQM" in table
    # The verdict opens the table; the arms run on one learner, so none is flagged.
    assert table.split("## What it shows\n\n")[1].startswith("- At step 8, frozen ")
    assert "Not one learner" not in table and "| same |" in table
    assert str(tmp_path) not in table and "`" not in table
    assert (report / "curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (report / "runs").glob("*.csv")) == [
        "frozen-seed0.csv",
        "frozen-seed1.csv",
        "scratch-seed0.csv",
        "scratch-seed1.csv",
    ]
    commands = (report / "commands.sh").read_text().splitlines()
    assert sum(line.startswith("semore-finetune ") for line in commands) == 4
    assert str(tmp_path) not in "\n".join(commands)  # the export beside OUT: $OUT/../
    assert sum('--out "$OUT/runs/frozen/seed0"' in line for line in commands) == 1
    results = json.loads((report / "results.json").read_text())
    assert results["steps"] == [0, 8]  # step 4 is not evaluated: no update before step 5
    assert len(results["arms"]["frozen"]["scores"]) == 2
    # The local runner measured each run's CPU time.
    frozen = results["arms"]["frozen"]
    assert frozen["cpu_measured"] and frozen["cpu_min_per_run"] > 0

    # Everything is finished: a rerun runs nothing and prints the report's command alone.
    capsys.readouterr()
    assert main(["--config", str(study), "--out", str(out), "--print-commands"]) == 0
    assert capsys.readouterr().out == (
        f"# report (1)\nsemore-compare --config {study} --out {out} --report-only\n"
    )
    (out / "runs" / "frozen" / "seed1" / "summary.json").unlink()  # as if interrupted
    assert main(["--config", str(study), "--out", str(out), "--print-commands"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(printed) == 2 and printed[0].startswith("semore-finetune ")
    assert printed[1].startswith("semore-compare ") and printed[1].endswith(" --report-only")
    assert "--encoder_mode frozen" in printed[0] and "--seed 1" in printed[0]

    # A longer study continues a run in the same folder: this study's report keeps its budget.
    assert finetune_main(shlex.split(printed[0])[1:]) == 0  # finish the interrupted run
    assert main(["--config", str(study), "--out", str(out), "--report-only", "--quiet"]) == 0
    before = json.loads((report / "results.json").read_text())
    run = out / "runs" / "scratch" / "seed0"
    line = next(c for c in commands if '"$OUT/runs/scratch/seed0"' in c)
    longer = shlex.split(line.replace("$OUT", str(out)))[1:]
    longer[longer.index("--num-train-steps") + 1] = "12"
    assert finetune_main([*longer, "--resume"]) == 0
    assert max(int(r["step"]) for r in read_metrics(run / "metrics.csv")) == 12
    assert main(["--config", str(study), "--out", str(out), "--report-only", "--quiet"]) == 0
    after = json.loads((report / "results.json").read_text())
    assert after["steps"] == before["steps"] and after["steps"][-1] == 8
    assert after["arms"]["scratch"]["scores"] == before["arms"]["scratch"]["scores"]
    assert after["arms"]["scratch"]["wall_time_s"] <= before["arms"]["scratch"]["wall_time_s"]
    rows = read_metrics(report / "runs" / "scratch-seed0.csv")
    assert max(int(r["step"]) for r in rows) == 8
    _report_beside_a_running_study(study, out, tmp_path, capsys)


def _report_beside_a_running_study(study: Path, out: Path, tmp_path: Path, capsys) -> None:
    """While a study runs (its lock held), a report of its finished runs goes to a results
    folder outside it; the study's own report folder stays its writer's."""
    partial = tmp_path / "partial"
    with FolderLock(out, "compare"):
        before = sorted(p.name for p in out.rglob("*"))
        argv = ["--config", str(study), "--out", str(out), "--report-only", "--quiet"]
        assert main([*argv, "--report", str(partial)]) == 0
        assert sorted(p.name for p in (partial / "runs").glob("*.csv")) == sorted(
            p.name for p in (out / "report" / "runs").glob("*.csv")
        )
        assert sorted(p.name for p in out.rglob("*")) == before  # nothing written to the study
        capsys.readouterr()
        assert main(argv) == 2  # a usage error: another writer holds the folder
        assert "is being written by semore-compare" in capsys.readouterr().err
        assert main([*argv, "--report", str(partial)]) == 0  # its lock is released after


def test_bad_study_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump({"arms": {"a": {"encoder": "missing.pt"}}, "reference_arm": "a"})
    )
    assert main(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt not found" in err


def dataset_study() -> dict:
    """A tiny study with its own dataset and one pretrained encoder."""
    small = {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 6}}
    return {
        "dataset": {
            "collect": "quickstart",
            "collect_overrides": {"episodes": 4, "episodes_per_shard": 2, **small},
            "annotate": "quickstart",
            "annotate_overrides": {"num_threads": 1},
        },
        "encoders": {
            "tiny": {
                "config": "quickstart",
                "overrides": {
                    "encoder": {"num_filters": 8, "num_heads": 2},
                    "data": {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
                    "trainer": {"max_steps": 2, "val_check_interval": 2},
                },
            }
        },
        "finetune": "quickstart",
        "overrides": {**TINY_FINETUNE, "env": small},
        "arms": {
            "tiny_frozen": {"encoder": "encoders.tiny", "overrides": {"encoder_mode": "frozen"}},
            "scratch": {"encoder": "none", "architecture_from": "encoders.tiny"},
        },
        "seeds": [0],
        "num_train_steps": 6,
        "eval_every_steps": 6,
        "num_eval_episodes": 1,
        "bootstrap_reps": 200,
    }


def test_study_builds_its_dataset_and_encoders_first(tmp_path, capsys):
    study = dataset_study()
    config, out = tmp_path / "study.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(study))
    assert main(["--config", str(config), "--out", str(out)]) == 0
    # The dataset stages run in-process with --quiet; the study's own progress still shows.
    err = capsys.readouterr().err
    assert "[1/1] tiny seed 0 done" in err and "[2/2] " in err
    assert (out / "data" / "manifest.json").is_file()
    assert (out / "encoders" / "tiny" / "encoder.pt").is_file()
    summary = json.loads((out / "runs" / "scratch" / "seed0" / "summary.json").read_text())
    assert summary["encoder_config"]["num_filters"] == 8  # the study encoder's architecture
    report = out / "report"
    assert (report / "table.md").is_file()
    # Provenance: every command from the dataset on, the dataset's hash, the encoder's config.
    commands = (report / "commands.sh").read_text().splitlines()[3:]
    assert [line.split()[0] for line in commands] == [
        "semore-collect",
        "semore-annotate",
        "semore-pretrain",
        "semore-finetune",
        "semore-finetune",
    ]
    assert "--resume" not in commands[2]
    dataset = json.loads((report / "dataset.json").read_text())
    assert len(dataset["manifest_sha256"]) == 64 and dataset["raw"]["totals"]["num_episodes"] == 4
    tiny = yaml.safe_load((report / "encoders" / "tiny.yaml").read_text())
    assert tiny["encoder"]["num_filters"] == 8
    kept = (report / "encoders" / "tiny.pt").read_bytes()  # the study goes on from here
    assert kept == (out / "encoders" / "tiny" / "encoder.pt").read_bytes()


def test_printed_commands_the_local_runner_and_slurm_run_one_plan(tmp_path, monkeypatch, capsys):
    """The same study, unstarted except for one finished run: --print-commands, a local run
    and --launcher slurm name the same commands, stage by stage, and skip the same run."""
    study = dataset_study()
    study["seeds"] = [0, 1]
    config, out = tmp_path / "study.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(study))
    done = out / "runs" / "scratch" / "seed1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"step": study["num_train_steps"]}))
    argv = ["--config", str(config), "--out", str(out)]

    def as_stages(pairs: list[tuple[str, list[list[str]]]]) -> list[tuple[str, list[str]]]:
        """(stage, [the command's module and arguments, one string]) without the launcher's
        way of starting it (console script or python -m)."""
        return [(name, [shlex.join(c) for c in commands]) for name, commands in pairs if commands]

    assert main([*argv, "--print-commands"]) == 0
    printed, name = [], None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("# "):
            name = line[2:].rsplit(" (", 1)[0]
            printed.append((name, []))
        else:  # semore-collect ... -> pipeline.collect.run ...
            script, *rest = shlex.split(line)
            module = f"pipeline.{script.removeprefix('semore-')}.run"
            printed[-1][1].append([module, *rest])

    submitted = []
    monkeypatch.setattr(compare_slurm, "launch", lambda stages, *a: submitted.extend(stages))
    assert main([*argv, "--launcher", "slurm"]) == 0
    slurm = [(s.name, [t.command[2:] for t in s.tasks]) for s in submitted]

    ran: list[tuple[str, list[list[str]]]] = []

    def in_process(command):
        ran.append((command.stage, [[command.module, *command.argv]]))
        return 0

    def jobs(todo, num_jobs):
        pretrain = todo[0].module == "pipeline.pretrain.run"
        ran.append(
            (
                "encoders" if pretrain else "fine-tuning runs",
                [[job.module, *job.argv] for job in todo],
            )
        )
        return [] if pretrain else ["stopped before running"]

    monkeypatch.setattr(compare_run, "run_in_process", in_process)
    monkeypatch.setattr(compare_run, "run_jobs", jobs)
    assert main(argv) == 2  # nothing really ran
    assert "1 run(s) failed: stopped before running" in capsys.readouterr().err

    names = ["collect", "annotate", "encoders", "fine-tuning runs", "report"]
    assert [name for name, _ in printed] == names == [name for name, _ in slurm]
    assert as_stages(printed[:-1]) == as_stages(slurm[:-1]) == as_stages(ran)
    assert printed[-1] == ("report", [["pipeline.compare.run", *argv, "--report-only"]])
    assert slurm[-1] == ("report", [["pipeline.compare.run", *argv, "--report-only"]])
    runs = dict(ran)["fine-tuning runs"]
    folders = {Path(run[run.index("--out") + 1]).relative_to(out) for run in runs}
    assert len(runs) == 3 and folders == {
        Path("runs/scratch/seed0"),
        Path("runs/tiny_frozen/seed0"),
        Path("runs/tiny_frozen/seed1"),
    }  # the finished scratch seed 1 is in none of them


def test_each_run_is_reported_as_it_ends_not_in_queue_order(monkeypatch, caplog):
    """A long run at the head of the queue does not hold back the progress of the short runs
    that end beside it; the runs still start in the plan's order."""
    started, long_may_end = [], threading.Event()

    def fake_run(job, threads):
        started.append(job.arm)
        if job.arm == "long":
            assert long_may_end.wait(timeout=30)
        else:
            time.sleep(0.05)
            if job.arm == "short2":
                long_may_end.set()
        return job, 0, 1.0

    monkeypatch.setattr(compare_jobs, "_run_job", fake_run)
    queue = [compare_jobs.Job("m", [], arm=arm) for arm in ("long", "short1", "short2")]
    with caplog.at_level("INFO", logger="pipeline.compare.jobs"):
        assert compare_jobs.run_jobs(queue, num_jobs=2) == []
    done = [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]
    assert started[0] == "long" and set(started) == {"long", "short1", "short2"}
    assert [line.split()[1] for line in done] == ["short1", "short2", "long"]
    assert done[0].startswith("[1/3] short1")
