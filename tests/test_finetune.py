"""Stage 3b, ``semore-finetune``: outputs, exact resume, encoder initialisation, CARLA
reconnects and one-line errors, on tiny highway runs (32x32 frames, 8-filter encoder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import from_dict, load_config, to_dict
from pipeline.errors import SemoreError
from pipeline.finetune import run as finetune_mod
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.eval import read_metrics
from pipeline.finetune.run import build_agent, build_encoder, main
from pipeline.sim.base import SimulatorConnectionError, StepResult
from pipeline.sim.driver import MOTION_DIM, motion_targets
from semore.encoder import SemoreEncoder, save_encoder

CONFIG = (
    Path(__file__).resolve().parents[1] / "pipeline" / "presets" / "finetune" / "quickstart.yaml"
)
TINY = [
    "--config", str(CONFIG),
    "--env.highway.image_height", "32",
    "--env.highway.image_width", "32",
    "--env.highway.max_episode_steps", "15",
    "--encoder.num_filters", "8",
    "--batch_size", "8",
    "--num_seed_steps", "10",
    "--eval_every_steps", "10",
    "--num_eval_episodes", "1",
    "--replay_capacity", "500",
    "--sac.hidden_dim", "32",
    "--fabric.accelerator", "cpu",
    "--quiet",
]  # fmt: skip
TRAIN_METRICS = ("critic_loss", "actor_loss", "alpha", "reward_aux_loss", "motion_aux_loss")
TIMING = ("wall_time_s", "steps_per_s")  # the only columns that may differ between equal runs


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and OpenMP threads stall on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_export(path: Path, size: int = 32, metadata: dict | None = None) -> SemoreEncoder:
    torch.manual_seed(123)
    encoder = SemoreEncoder(frame_stack=3, image_height=size, image_width=size, num_filters=8)
    save_encoder(path, encoder, metadata)
    return encoder


def load_ckpt(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def error_line(capsys) -> str:
    """The one error line (warnings logged before it are allowed)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("semore-finetune: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]


def test_finetune_outputs_and_resume_continues_exactly(tmp_path):
    out = tmp_path / "run"
    aux = ["--sac.reward_aux_weight", "1.0", "--sac.motion_aux_weight", "1.0"]
    assert (
        main([*TINY, *aux, "--encoder", "none", "--out", str(out), "--num-train-steps", "20"]) == 0
    )

    rows = read_metrics(out / "metrics.csv")
    assert {r["phase"] for r in rows} == {"train", "eval"}
    # No evaluation at step 10: no update has happened yet (the policy is the step-0 one).
    assert [int(r["step"]) for r in rows if r["phase"] == "eval"] == [0, 20]
    for row in rows:
        for key in ("episode_return", "distance_m", "collisions", "mean_abs_steer"):
            assert math.isfinite(float(row[key])), (key, row)
        for key, value in row.items():
            if key != "phase" and value != "":
                assert math.isfinite(float(value)), (key, row)
    train = [r for r in rows if r["phase"] == "train"]
    for key in TRAIN_METRICS:
        assert any(r.get(key, "") != "" for r in train), key
    assert (out / "learning_curve.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 20 and summary["encoder_source"] == "none"
    assert summary["final_eval"]["episode_return"] == pytest.approx(
        float([r for r in rows if r["phase"] == "eval"][-1]["episode_return"]), rel=1e-5
    )
    ckpt = load_ckpt(out)
    assert ckpt["step"] == 20 and ckpt["num_updates"] == 5  # steps 12, 14, ..., 20
    # The evaluation at step 20 fell inside a training episode: the resume re-runs its start.
    assert (
        len(ckpt["open_episode"]["actions"]) == ckpt["open_episode"]["stats"]["episode_steps"] > 0
    )
    assert (out / "checkpoints" / ckpt["replay_file"]).is_file()
    assert 0 < ckpt["cpu_time_s"] <= summary["cpu_time_s"]  # the process's own CPU count

    # --resume continues the step count and appends to metrics.csv.
    resume = [*TINY, *aux, "--encoder", "none", "--out", str(out), "--resume"]
    assert main([*resume, "--num-train-steps", "30"]) == 0
    resumed = read_metrics(out / "metrics.csv")
    assert [{k: r[k] for k in rows[0]} for r in resumed[: len(rows)]] == rows
    assert all(int(r["step"]) > 20 for r in resumed[len(rows) :])
    assert [int(r["step"]) for r in resumed if r["phase"] == "eval"] == [0, 20, 30]
    assert load_ckpt(out)["step"] == 30 and load_ckpt(out)["num_updates"] == 10
    # The CPU count goes on from the checkpoint's, as the wall time does.
    assert json.loads((out / "summary.json").read_text())["cpu_time_s"] > ckpt["cpu_time_s"]
    assert len(list((out / "checkpoints").glob("replay-*.npz"))) == 1

    # The resumed run is the run that was never interrupted.
    straight = tmp_path / "straight"
    assert (
        main([*TINY, *aux, "--encoder", "none", "--out", str(straight), "--num-train-steps", "30"])
        == 0
    )
    a, b = load_ckpt(out)["agent"]["agent"], load_ckpt(straight)["agent"]["agent"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [
        r["episode_return"] for r in read_metrics(straight / "metrics.csv") if r["phase"] == "eval"
    ]
    assert evals == [r["episode_return"] for r in resumed if r["phase"] == "eval"]

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    # Every row, train rows of the episode re-run on resume included, is the uninterrupted one's.
    assert untimed(read_metrics(out / "metrics.csv")) == untimed(
        read_metrics(straight / "metrics.csv")
    )

    # A checkpoint of an older version has no CPU count: the resumed run's total is unknown.
    older = load_ckpt(straight)
    del older["cpu_time_s"]
    torch.save(older, straight / "checkpoints" / "last.pt")
    more = [*TINY, *aux, "--encoder", "none", "--out", str(straight), "--resume"]
    assert main([*more, "--num-train-steps", "32"]) == 0
    assert json.loads((straight / "summary.json").read_text())["cpu_time_s"] is None


def test_training_does_not_depend_on_how_often_it_evaluates(tmp_path):
    # Evaluation has its own simulator and random streams: same seed, same train rows. 7-step
    # episodes, so evaluations fall inside training episodes (steps 8, 12, 16, 20 vs 6, 12, 18).
    expected_evals = {4: [0, 8, 12, 16, 20, 24], 6: [0, 6, 12, 18, 24]}  # no update before 5
    rows, agents = {}, {}
    for every, evals in expected_evals.items():
        out = tmp_path / f"every{every}"
        args = [*TINY, "--env.highway.max_episode_steps", "7", "--num_seed_steps", "4",
                "--eval_every_steps", str(every), "--measure_reference", "false",
                "--encoder", "none", "--out", str(out), "--num-train-steps", "24"]  # fmt: skip
        assert main(args) == 0
        metrics = read_metrics(out / "metrics.csv")
        assert [int(r["step"]) for r in metrics if r["phase"] == "eval"] == evals
        train = [r for r in metrics if r["phase"] == "train"]
        rows[every] = [{k: v for k, v in r.items() if k not in TIMING} for r in train]
        agents[every] = load_ckpt(out)["agent"]["agent"]
    # Episodes end by a crash or after 7 steps; evaluations fall inside them, not at their ends.
    ends = [int(r["step"]) for r in rows[4]]
    assert len(ends) >= 3 and all(b - a <= 7 for a, b in zip([0, *ends[:-1]], ends, strict=True))
    inside = {step for steps in expected_evals.values() for step in steps} - {0, 24}  # not the ends
    assert not set(ends) & inside
    assert rows[4] == rows[6]
    assert all(torch.equal(agents[4][k], agents[6][k]) for k in agents[4])


def test_resume_refuses_an_open_episode_that_does_not_replay(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--measure_reference", "false", "--encoder", "none", "--out", str(out)]
    steps = 12
    assert main([*args, "--num-train-steps", str(steps)]) == 0
    while load_ckpt(out)["open_episode"] is None:  # stopped between episodes: one step more
        steps += 1
        assert main([*args, "--num-train-steps", str(steps), "--resume"]) == 0
    ckpt = load_ckpt(out)
    ckpt["open_episode"]["stats"]["episode_return"] += 1.0  # as if the simulator had drifted
    torch.save(ckpt, out / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main([*args, "--num-train-steps", str(steps + 2), "--resume"]) == 2
    assert "re-running training episode" in error_line(capsys)


def test_pretrained_export_initialises_agent_encoder(tmp_path):
    export = tmp_path / "encoder.pt"
    encoder = make_export(export)
    out = tmp_path / "run"
    # No update happens before step 10, so the final checkpoint holds the step-0 weights.
    args = [*TINY, "--encoder", str(export), "--out", str(out), "--num-train-steps", "5"]
    assert main(args) == 0
    agent_state = load_ckpt(out)["agent"]["agent"]
    assert load_ckpt(out)["num_updates"] == 0
    for name, value in encoder.state_dict().items():
        assert torch.equal(agent_state[f"encoder.{name}"], value), name
    assert json.loads((out / "summary.json").read_text())["encoder_source"] == str(export.resolve())

    # Same seed, pretrained vs none: identical architecture and heads, different encoder.
    cfg = load_config(FinetuneConfig, CONFIG, TINY[2:-1])
    agents = []
    for source in (str(export), "none"):
        torch.manual_seed(cfg.seed)
        agent = build_agent(build_encoder(source, cfg)[0], cfg, pretrained=source != "none")
        agents.append(agent.state_dict())
    pretrained, baseline = agents
    assert pretrained.keys() == baseline.keys()
    assert all(
        torch.equal(pretrained[k], baseline[k]) for k in pretrained if k.startswith("actor.")
    )
    assert all(
        torch.equal(pretrained[k], baseline[k]) for k in pretrained if k.startswith("critic.")
    )
    assert not torch.equal(pretrained["encoder.fuse.0.weight"], baseline["encoder.fuse.0.weight"])


def test_motion_targets_are_raw_state_values():
    names = (
        "speed_mps",
        "acceleration_mps2",
        "yaw_rate_radps",
        "lat_speed_mps",
        "lateral_offset_m",
        "heading_rad",
    )
    state = dict(zip(names, (20.0, 1.0, 0.1, -0.5, 0.3, 0.02), strict=True))
    assert np.allclose(motion_targets(state), [20.0, 1.0, 0.1, -0.5, 0.3, 0.02])
    assert MOTION_DIM == 6


def test_auxiliary_targets_are_scaled_the_same_way_with_and_without_a_pretrained_encoder(tmp_path):
    # Before, the pretrained arm regressed standardised motion and the baseline raw m/s.
    export = tmp_path / "encoder.pt"
    make_export(export, metadata={"motion_mean": [100.0] * 4, "motion_std": [50.0] * 4})
    aux = ["--sac.reward_aux_weight", "1.0", "--sac.motion_aux_weight", "1.0"]
    stats = []
    for source in (str(export), "none"):
        out = tmp_path / source.replace("/", "_")
        args = [*TINY, *aux, "--encoder", source, "--out", str(out), "--num-train-steps", "12"]
        assert main(args) == 0
        agent = load_ckpt(out)["agent"]["agent"]
        stats.append(
            {k: agent[k] for k in ("reward_mean", "reward_std", "motion_mean", "motion_std")}
        )
    for key in stats[0]:
        assert torch.equal(stats[0][key], stats[1][key]), key  # the same seed steps' statistics
    assert 5.0 < float(stats[0]["motion_mean"][0]) < 40.0  # highway speeds, not the export's


@pytest.mark.parametrize("mode", ["frozen", "warmup"])
def test_frozen_and_warmup_regimes(tmp_path, mode):
    export = tmp_path / "encoder.pt"
    encoder = make_export(export)
    out = tmp_path / mode
    args = [*TINY, "--encoder", str(export), "--out", str(out), "--num-train-steps", "20",
            "--encoder_mode", mode, "--warmup_updates", "3"]  # fmt: skip
    assert main(args) == 0
    ckpt = load_ckpt(out)
    assert ckpt["num_updates"] == 5
    agent = ckpt["agent"]["agent"]
    unchanged = all(torch.equal(agent[f"encoder.{k}"], v) for k, v in encoder.state_dict().items())
    assert unchanged == (mode == "frozen")  # warmup: frozen for 3 updates, then trained
    with np.load(out / "checkpoints" / ckpt["replay_file"]) as replay:
        features = replay["features"]
    assert features.shape[1] == 50 and np.abs(features[:10]).sum() > 0  # stored per frame
    reference = json.loads((out / "reference.json").read_text())
    assert reference["expert_return"] > reference["random_return"]
    evals = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "eval"]
    for row in evals:
        normalized = (float(row["episode_return"]) - reference["random_return"]) / (
            reference["expert_return"] - reference["random_return"]
        )
        assert float(row["normalized_return"]) == pytest.approx(normalized, rel=1e-5)


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    export = tmp_path / "encoder.pt"
    make_export(export, size=32)
    out = str(tmp_path / "run")
    mismatch = ["--env.highway.image_height", "40", "--env.highway.image_width", "40"]
    assert main([*TINY, *mismatch, "--encoder", str(export), "--out", out]) == 2
    line = error_line(capsys)
    assert "32x32" in line and "40x40" in line and "image_height" in line

    missing = tmp_path / "nope" / "encoder.pt"
    assert main([*TINY, "--encoder", str(missing), "--out", out]) == 2
    assert str(missing) in error_line(capsys)

    assert main([*TINY, "--encoder", "none", "--out", out, "--num-train-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*TINY, "--encoder", "none", "--out", out, "--num-train-steps", "4"]) == 2
    assert "--resume" in error_line(capsys)
    changed = ["--batch_size", "4", "--resume"]
    assert main([*TINY, *changed, "--encoder", "none", "--out", out, "--num-train-steps", "4"]) == 2
    assert "batch_size" in error_line(capsys)
    assert main([*TINY, "--encoder", str(export), "--out", out, "--resume"]) == 2
    assert "--encoder" in error_line(capsys)


def test_the_removed_fabric_devices_loads_only_as_the_one_value_it_had():
    """Configs and checkpoints written while fabric.devices existed carry devices: 1."""
    cfg = from_dict(FinetuneConfig, {"fabric": {"devices": 1, "precision": "bf16-mixed"}})
    assert cfg.fabric.precision == "bf16-mixed" and "devices" not in to_dict(cfg)["fabric"]
    with pytest.raises(SemoreError) as err:
        from_dict(FinetuneConfig, {"fabric": {"devices": 2}}, where="old.yaml")
    assert str(err.value) == (
        "old.yaml.fabric.devices is 2: the field was removed (it could only be 1); expected it "
        "left out"
    )


def test_the_encoder_lr_has_one_source(tmp_path, capsys):
    # sac.encoder_lr was always overridden by the top-level encoder_lr; it is gone from SAC.
    # "3e-5" is a string to YAML 1.1 (no dot); numbers are read from it all the same.
    for text in ("0.00003", "3e-5"):
        config = load_config(FinetuneConfig, CONFIG, ["--encoder_lr", text, *TINY[2:-1]])
        agent = build_agent(build_encoder("none", config)[0], config, pretrained=False)
        assert agent.encoder_opt.param_groups[0]["lr"] == 3e-5
    with pytest.raises(SemoreError, match="encoder_lr is 'fast': expected a number"):
        load_config(FinetuneConfig, CONFIG, ["--encoder_lr", "fast", *TINY[2:-1]])
    default = load_config(FinetuneConfig, CONFIG, TINY[2:-1])
    for pretrained, lr in ((False, 1e-3), (True, 1e-4)):
        agent = build_agent(build_encoder("none", default)[0], default, pretrained)
        assert agent.encoder_opt.param_groups[0]["lr"] == lr
    args = [*TINY, "--sac.encoder_lr", "1e-4", "--encoder", "none", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "sac: unknown field 'encoder_lr'" in error_line(capsys)


class FlakyCarla:
    """A CARLA stand-in (16x16 frames) whose connection drops on chosen step calls."""

    action_dim = 2
    camera_names = ["rgb"]
    image_shape = (16, 16)
    step_duration_s = 0.05

    def __init__(self, fail_calls=(), always_fail=False):
        self.fail_calls = set(fail_calls)
        self.always_fail = always_fail
        self.calls = self.reconnects = 0

    def reset(self, seed):
        self.rng = np.random.default_rng(seed)
        self.t = 0
        return {"rgb": self._frame()}, self._state(0.0)

    def _frame(self):
        return self.rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    def _state(self, steer):
        return {
            "speed_mps": 10.0,
            "acceleration_mps2": 0.0,
            "yaw_rate_radps": 0.0,
            "lat_speed_mps": 0.0,
            "steer": float(steer),
            "collision": False,
        }

    def step(self, action):
        self.calls += 1
        if self.always_fail or self.calls in self.fail_calls:
            raise SimulatorConnectionError("carla server at localhost:2000 timed out")
        self.t += 1
        return StepResult(
            {"rgb": self._frame()},
            np.asarray(action),
            0.5,
            False,
            self.t >= 24,
            self._state(action[0]),
            distance_m=0.5,
        )

    def reconnect(self):
        self.reconnects += 1

    def close(self):
        pass


def test_carla_connection_loss_reconnects_and_gives_up(tmp_path, monkeypatch, capsys):
    envs = []

    def fake_make_env(env, worker=0):
        assert env.backend == "carla"
        return envs[-1]

    monkeypatch.setattr(finetune_mod, "make_env", fake_make_env)
    # 16 px frames: below the strided trunk's 31 px, so the DrQ trunk.
    carla = ["--env.backend", "carla", "--env.carla.image_height", "16", "--env.carla.image_width",
             "16", "--env.carla.camera_yaws_deg", "[0.0]", "--env.carla.max_retries", "2",
             "--measure_reference", "false", "--encoder.trunk", "drq"]  # fmt: skip
    envs.append(FlakyCarla(fail_calls={9, 30, 31}))
    out = tmp_path / "run"
    assert (
        main([*TINY, *carla, "--encoder", "none", "--out", str(out), "--num-train-steps", "12"])
        == 0
    )
    assert envs[-1].reconnects == 3
    ckpt = load_ckpt(out)
    # Action repeat 4 on CARLA: 6 sim steps per eval episode; true distance sums every one.
    assert ckpt["step"] == 12 and ckpt["sim_steps"] == 48
    evals = [r for r in read_metrics(out / "metrics.csv") if r["phase"] == "eval"]
    assert all(float(r["episode_steps"]) == 6 and float(r["distance_m"]) == 12.0 for r in evals)
    assert all(float(r["episode_return"]) == 12.0 for r in evals)

    envs.append(FlakyCarla(always_fail=True))
    assert main([*TINY, *carla, "--encoder", "none", "--out", str(tmp_path / "dead")]) == 2
    assert "gave up after 2 consecutive reconnects" in error_line(capsys)
    assert envs[-1].reconnects == 2


@pytest.mark.parametrize(
    ("kind", "mode", "trunk_prefix"),
    [("drqv2", "finetune", "encoder.trunk."), ("semore", "finetune", "encoder.sem_trunk."),
     ("drqv2", "frozen", "encoder.trunk."), ("semore", "frozen", "encoder.mot_trunk.")],
)  # fmt: skip
def test_from_pixels_arms_train_their_trunk_and_frozen_arms_do_not(
    tmp_path, kind, mode, trunk_prefix
):
    """drqv2 and scratch (--encoder none, end to end) train their conv trunks with the critic's
    gradient; the same encoders frozen never change."""
    out = tmp_path / f"{kind}-{mode}"
    args = [*TINY, "--encoder", "none", "--out", str(out), "--num-train-steps", "20",
            "--encoder.kind", kind, "--encoder_mode", mode]  # fmt: skip
    assert main(args) == 0
    overrides = [*TINY[2:-1], "--encoder.kind", kind, "--encoder_mode", mode]  # no --quiet
    cfg = load_config(FinetuneConfig, CONFIG, overrides, stage="finetune")
    torch.manual_seed(cfg.seed)  # as finetune() does before building the encoder
    initial, _, enc_cfg = build_encoder("none", cfg)
    assert enc_cfg.kind == kind
    agent = load_ckpt(out)["agent"]["agent"]
    trunk = {
        k: v for k, v in initial.state_dict().items() if f"encoder.{k}".startswith(trunk_prefix)
    }
    assert trunk, f"no {trunk_prefix} weights in {sorted(initial.state_dict())}"
    changed = [k for k, v in trunk.items() if not torch.equal(agent[f"encoder.{k}"], v)]
    if mode == "frozen":
        assert changed == []
    else:
        assert sorted(changed) == sorted(trunk)  # every trunk weight and bias moved
