"""SAC update cost and fine-tuning throughput, measured side by side in one run.

    python benchmarks/rl_update.py [--batch-size 128] [--repeats 5] [--steps 600]
        [--before-rev 8a63b5e] [--config quickstart] [--compile]

1. Update time at ``--batch-size`` on 84x84 frame stacks with the Semore encoder, timed
   round-robin across variants (robust to other load on the machine): the agent
   of ``--before-rev`` (its ``semore/sac.py`` loaded from git: target encoder, two next_obs
   passes), today's end-to-end update, the same with channels-last memory and with bf16
   autocast, and today's frozen-encoder update on cached features.
2. Agent steps/s of the fine-tuning loop (``semore-finetune``'s own code, seed steps
   included) in the frozen and the end-to-end regimes, against the bare simulator + render
   loop (the Driver with random actions).
3. With ``--compile``: torch.compile of the encoder in the end-to-end update as the loop runs
   it (its batch size, channels-last, bf16), the compile time and the updates it needs to pay
   for itself.

Ratios are what to compare: the machine's speed varies from day to day.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.finetune.config import FinetuneConfig  # noqa: E402
from pipeline.finetune.run import finetune  # noqa: E402
from pipeline.sim import backend_spec, make_env  # noqa: E402
from pipeline.sim.driver import Driver  # noqa: E402
from semore.encoder import EncoderConfig, SemoreEncoder  # noqa: E402
from semore.sac import SACAgent, SACConfig  # noqa: E402


def load_before(rev: str):
    """``semore/sac.py`` as it was at ``rev``, as a module (it imports today's semore.augment)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:semore/sac.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "sac_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sac_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sac_before"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def batch_of(batch_size: int, repr_dim: int, features: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "action": torch.rand(batch_size, 2, generator=g) * 2 - 1,
        "reward": torch.rand(batch_size, generator=g),
        "reward1": torch.rand(batch_size, generator=g),
        "discount": torch.full((batch_size,), 0.99),
    }
    if features:
        batch["obs_h"] = torch.randn(batch_size, repr_dim, generator=g)
        batch["next_obs_h"] = torch.randn(batch_size, repr_dim, generator=g)
    else:
        shape = (batch_size, 9, 84, 84)
        batch["obs"] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        batch["next_obs"] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return batch


def one_update(agent, batch: dict, step: int, autocast: bool = False) -> float:
    """Seconds of one update."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        agent.update(batch, step)
    return time.perf_counter() - start


def compile_cost(batch_size: int, repeats: int) -> dict[str, float]:
    """torch.compile of the encoder in the loop's end-to-end setting (channels-last + bf16):
    the first update (which compiles, with inductor's caches off so the cost is a fresh
    machine's) and the steady update, interleaved with eager ones so that load from other
    processes weighs on both alike."""
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True

    def agent(compiled: bool) -> SACAgent:
        torch.manual_seed(0)
        enc = SemoreEncoder.from_config(EncoderConfig()).to(memory_format=torch.channels_last)
        if compiled:
            enc.compile()  # in place: the agent calls the compiled forward
        return SACAgent(enc, 2, SACConfig())

    frames = batch_of(batch_size, 50, False)
    eager, compiled = agent(False), agent(True)
    first = {
        "eager": one_update(eager, frames, 0, True),
        "compiled": one_update(compiled, frames, 0, True),
    }
    steady = {"eager": [], "compiled": []}
    for step in range(1, repeats + 1):
        steady["eager"].append(one_update(eager, frames, step, True))
        steady["compiled"].append(one_update(compiled, frames, step, True))
    return {
        "eager_first_s": first["eager"],
        "eager_s": float(np.median(steady["eager"])),
        "compiled_first_s": first["compiled"],
        "compiled_s": float(np.median(steady["compiled"])),
    }


def update_times(args) -> dict[str, float]:
    """Median seconds per update of each variant, timed round-robin (one update of each per
    repeat) so that load from other processes weighs on every variant alike."""
    before = load_before(args.before_rev)

    def encoder(channels_last: bool = False) -> SemoreEncoder:
        torch.manual_seed(0)
        enc = SemoreEncoder.from_config(EncoderConfig())
        return enc.to(memory_format=torch.channels_last) if channels_last else enc

    frames = batch_of(args.batch_size, 50, False)
    features = batch_of(args.batch_size, 50, True)
    now = SACAgent(encoder(), 2, SACConfig())
    cl = SACAgent(encoder(channels_last=True), 2, SACConfig())
    variants = {  # name: (agent, batch, bf16 autocast)
        "before (target encoder, 3 encoder passes)": (
            before.SACAgent(encoder(), 2, before.SACConfig()), frames, False
        ),
        "end to end (one next_obs pass)": (now, frames, False),
        "end to end, channels-last": (cl, frames, False),
        "end to end, bf16 autocast": (now, frames, True),
        "end to end, channels-last + bf16 autocast": (cl, frames, True),
        "frozen (cached features)": (
            SACAgent(encoder(), 2, SACConfig(), encoder_trainable=False), features, False
        ),
    }  # fmt: skip
    for agent, batch, autocast in variants.values():
        one_update(agent, batch, 0, autocast)  # warm-up
    times = {name: [] for name in variants}
    for step in range(1, args.repeats + 1):
        for name, (agent, batch, autocast) in variants.items():
            times[name].append(one_update(agent, batch, step, autocast))
    return {name: float(np.median(t)) for name, t in times.items()}


def bare_env_rate(cfg: FinetuneConfig, steps: int) -> float:
    """Agent steps/s of the simulator + render alone (Driver, uniform random actions)."""
    env = make_env(cfg.env)
    driver = Driver(env, cfg.repeat, cfg.frame_stack, backend_spec(cfg.env).max_retries)
    rng = np.random.default_rng(0)
    done, episode = True, 0
    start = time.perf_counter()
    for _ in range(steps):
        if done:
            driver.reset(episode)
            episode += 1
        step = driver.step(rng.uniform(-1, 1, 2).astype(np.float32))
        done = step.terminated or step.truncated
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def loop_rate(cfg: FinetuneConfig, mode: str, steps: int) -> float:
    """Agent steps/s of semore-finetune's loop in ``mode`` (no evaluation, no reference)."""
    cfg = replace(
        cfg,
        encoder_mode=mode,
        num_train_steps=steps,
        num_seed_steps=min(cfg.num_seed_steps, steps // 4),
        eval_every_steps=10 * steps,
        num_eval_episodes=1,
        measure_reference=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = finetune(cfg, "none", Path(tmp) / "run")
    return summary["steps_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600, help="agent steps per loop run")
    parser.add_argument("--before-rev", default="8a63b5e", help="git revision to compare with")
    parser.add_argument("--config", default="quickstart", help="finetune preset or YAML")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the encoder"
    )
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    times = update_times(args)
    base = times["before (target encoder, 3 encoder passes)"]
    print(f"\nSAC update at batch {args.batch_size}, 84x84x9 frame stacks:")
    for name, seconds in times.items():
        print(f"  {name:45s} {1000 * seconds:8.1f} ms   {base / seconds:5.2f}x before")
    print(
        "  (the fine-tuning loop uses channels-last always, bf16 with fabric.precision bf16-mixed)"
    )

    cfg = load_config(FinetuneConfig, args.config, stage="finetune")
    if args.compile:
        c = compile_cost(cfg.batch_size, args.repeats)  # the loop's batch decides
        saved_s = c["eager_s"] - c["compiled_s"]
        overhead_s = c["compiled_first_s"] - c["eager_first_s"]
        run_updates = cfg.num_train_steps * cfg.updates_per_step // cfg.update_every
        print(f"\ntorch.compile of the encoder (end to end, channels-last + bf16, batch "
              f"{cfg.batch_size} as in the {args.config} loop):")  # fmt: skip
        print(f"  {'eager update':45s} {1000 * c['eager_s']:8.1f} ms")
        print(f"  {'compiled update':45s} {1000 * c['compiled_s']:8.1f} ms   "
              f"{c['eager_s'] / c['compiled_s']:5.2f}x eager")  # fmt: skip
        print(f"  {'compile time (first update, over eager)':45s} {overhead_s:8.1f} s")
        if saved_s > 0:
            print(f"  pays for itself after {overhead_s / saved_s:.0f} updates; a "
                  f"{cfg.num_train_steps}-step {args.config} run makes {run_updates}")  # fmt: skip
        else:
            print("  never pays for itself: a compiled update is not faster here")
    bare = bare_env_rate(cfg, args.steps)
    print(f"\nagent steps/s ({args.config} preset, update_every {cfg.update_every}, "
          f"updates_per_step {cfg.updates_per_step}, batch {cfg.batch_size}):")  # fmt: skip
    print(f"  {'bare simulator + render':45s} {bare:8.1f}")
    for mode in ("frozen", "finetune"):
        rate = loop_rate(cfg, mode, args.steps)
        print(f"  {'fine-tuning loop, ' + mode:45s} {rate:8.1f}   {rate / bare:5.2f}x bare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
