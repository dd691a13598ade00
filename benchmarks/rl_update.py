"""SAC update cost and fine-tuning throughput, measured side by side in one run.

    python benchmarks/rl_update.py [--batch-size 128] [--repeats 5] [--steps 300]
        [--before-rev 8a63b5e] [--config quickstart] [--compile] [--no-loop]

1. Where an end-to-end update's time goes (channels-last + bf16, as the presets run it):
   DrQ shifts, the encoder's forward of ``obs`` (with gradient) and of ``next_obs``, its
   backward, and the heads (critic, actor, temperature) alone.
2. Update time at ``--batch-size`` on 84x84 frame stacks with the Semore encoder, timed
   round-robin across variants (robust to other load on the machine): the agent of
   ``--before-rev`` (its ``semore/sac.py`` loaded from git: target encoder, two next_obs
   passes), today's end-to-end update in fp32 / channels-last / bf16, the cheap end-to-end
   update on cached trunk tokens (``encoder_trainable_from``), the same guided (a guide batch
   of 32 frame stacks every update, from memory: PNG decoding is not timed; as frames, and as
   the frozen trunk's tokens, ``guide.cache_tokens``), and the frozen-encoder update on cached
   features.
3. Cost per agent step of each arm on one matched learner (``--batch-size``, 2 updates per
   step as the frozen arms run): the simulator step, what the arm encodes per stored frame,
   and its updates; ratios against the frozen arm.
4. Agent steps/s of the fine-tuning loop (``semore-finetune``'s own code, seed steps included)
   on that matched learner, frozen and with cached trunk tokens, against the bare simulator.
5. With ``--compile``: torch.compile of the encoder in the end-to-end update as the loop runs
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
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.data import schema  # noqa: E402
from pipeline.finetune.config import FinetuneConfig  # noqa: E402
from pipeline.finetune.run import finetune  # noqa: E402
from pipeline.sim import backend_spec, make_env  # noqa: E402
from pipeline.sim.driver import Driver  # noqa: E402
from semore.encoder import EncoderConfig, SemoreEncoder  # noqa: E402
from semore.guide import PretrainGuide  # noqa: E402
from semore.heads import SemorePretrainModel  # noqa: E402
from semore.losses import SemorePretrainLoss  # noqa: E402
from semore.sac import SACAgent, SACConfig  # noqa: E402
from semore.trunk_cache import cached_tokens, features_of_tokens, tokens_to_cache  # noqa: E402

BEFORE = "before (target encoder, 3 encoder passes)"
E2E = "end to end, channels-last + bf16 autocast"
GUIDED = "guided, channels-last + bf16"
# encoder_trainable_from: (end-to-end variant, guided on guide frames, on guide tokens)
CACHED = {
    "interaction": ("from interaction, trunk tokens cached", "guided from interaction, cached",
                    "guided from interaction, guide tokens too"),
    "projection": ("from projection, tokens cached", "guided from projection, cached",
                   "guided from projection, guide tokens too"),
}  # fmt: skip
FROZEN = "frozen (cached features, + bf16)"
SHIFTS = "DrQ shifts of obs and next_obs"
CRITIC = "critic step incl. encoder backward"
HEADS_ALONE = "critic step, heads alone (h detached)"
BACKWARD = "encoder backward (difference of the two)"
TOKEN_DTYPE_T = torch.float16  # what the replay stores (semore.trunk_cache.TOKEN_DTYPE)


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


def make_encoder(channels_last: bool = True, trainable_from: str = "trunk") -> SemoreEncoder:
    torch.manual_seed(0)
    enc = SemoreEncoder.from_config(EncoderConfig())
    enc = enc.to(memory_format=torch.channels_last) if channels_last else enc
    if trainable_from != "trunk":
        enc.freeze_below(trainable_from)
    return enc


def token_batch_of(batch: dict, encoder: SemoreEncoder) -> dict[str, torch.Tensor]:
    """``batch`` with the frame stacks replaced by their cached tokens (float16)."""
    out = {k: v for k, v in batch.items() if k not in ("obs", "next_obs")}
    for key in ("obs", "next_obs"):
        out[f"{key}_tokens"] = tokens_to_cache(encoder, batch[key]).flatten(1).to(TOKEN_DTYPE_T)
    return out


def attach_synthetic_guide(agent: SACAgent, batch_size: int, tokens: bool = False) -> None:
    """A guide on one fixed in-memory batch (CLIP-sized embeddings), so only compute is timed;
    ``tokens``: its frames as the frozen trunk's tokens (``guide.cache_tokens``)."""
    g = torch.Generator().manual_seed(1)
    motion_dim = len(schema.MOTION_TARGETS)
    emb = torch.nn.functional.normalize(torch.randn(2, batch_size, 512, generator=g), dim=-1)
    guide_batch = {
        "obs": torch.randint(0, 256, (batch_size, 9, 84, 84), generator=g, dtype=torch.uint8),
        "action": torch.rand(batch_size, 2, generator=g) * 2 - 1,
        "emb_sem": emb[0], "emb_mot": emb[1],
        "motion": torch.randn(batch_size, motion_dim, generator=g),
        "reward": torch.randn(batch_size, generator=g),
    }  # fmt: skip
    if tokens:
        obs = guide_batch.pop("obs").float()
        guide_batch["obs_tokens"] = tokens_to_cache(agent.encoder, obs).flatten(1).half()
    model = SemorePretrainModel(agent.encoder, 512, motion_dim, 2)
    agent.guide = PretrainGuide(model, SemorePretrainLoss(), lambda drawn: repeat(guide_batch),
                                1.0, 1, 3e-4, 4)  # fmt: skip


def update_variants(args) -> dict[str, tuple]:
    """name: (agent, batch, bf16 autocast) of every timed update variant."""
    frames = batch_of(args.batch_size, 50, False)
    features = batch_of(args.batch_size, 50, True)
    now = SACAgent(make_encoder(channels_last=False), 2, SACConfig())
    cl = SACAgent(make_encoder(), 2, SACConfig())
    guided = SACAgent(make_encoder(), 2, SACConfig())
    attach_synthetic_guide(guided, args.guide_batch_size)
    variants = {
        "end to end (one next_obs pass)": (now, frames, False),
        "end to end, channels-last": (cl, frames, False),
        "end to end, bf16 autocast": (now, frames, True),
        E2E: (cl, frames, True),
        GUIDED: (guided, frames, True),
    }
    for point, names in CACHED.items():
        agents = [SACAgent(make_encoder(trainable_from=point), 2, SACConfig()) for _ in range(3)]
        attach_synthetic_guide(agents[1], args.guide_batch_size)
        attach_synthetic_guide(agents[2], args.guide_batch_size, tokens=True)
        batch = token_batch_of(frames, agents[0].encoder)
        variants.update(
            {name: (agent, batch, True) for name, agent in zip(names, agents, strict=True)}
        )
    variants = {
        **variants,
        FROZEN: (SACAgent(make_encoder(), 2, SACConfig(), encoder_trainable=False), features, True),
    }
    if args.before_rev:
        before = load_before(args.before_rev)
        agent = before.SACAgent(make_encoder(channels_last=False), 2, before.SACConfig())
        variants = {BEFORE: (agent, frames, False), **variants}
    return variants


def update_times(args) -> dict[str, float]:
    """Median seconds per update of each variant, timed round-robin (one update of each per
    repeat) so that load from other processes weighs on every variant alike."""
    variants = update_variants(args)
    for agent, batch, autocast in variants.values():
        one_update(agent, batch, 0, autocast)  # warm-up
    times = {name: [] for name in variants}
    for step in range(1, args.repeats + 1):
        for name, (agent, batch, autocast) in variants.items():
            times[name].append(one_update(agent, batch, step, autocast))
    return {name: float(np.median(t)) for name, t in times.items()}


def profile_update(batch_size: int, repeats: int) -> dict[str, float]:
    """Median seconds of each part of an end-to-end update (channels-last + bf16)."""
    agent = SACAgent(make_encoder(), 2, SACConfig())
    batch = batch_of(batch_size, 50, False)
    targets = (batch["action"], batch["reward"], batch["discount"])
    parts: dict[str, list[float]] = {}
    clock = time.perf_counter

    def lap(name: str, start: float) -> float:
        now = clock()
        parts.setdefault(name, []).append(now - start)
        return now

    for _ in range(repeats + 1):  # the first round warms up
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t = clock()
            obs, next_obs = agent.aug(batch["obs"].float()), agent.aug(batch["next_obs"].float())
            t = lap(SHIFTS, t)
            h = agent.encoder(obs)
            t = lap("encoder forward, obs (with gradient)", t)
            with torch.no_grad():
                next_h = agent.encoder(next_obs)
            t = lap("encoder forward, next_obs", t)
            agent.update_critic(h, *targets, next_h)
            t = lap(CRITIC, t)
            agent.update_critic(h.detach(), *targets, next_h)
            t = lap(HEADS_ALONE, t)
            agent.update_actor(h)
            lap("actor + temperature step", t)
    medians = {name: float(np.median(t[1:])) for name, t in parts.items()}
    medians[BACKWARD] = max(0.0, medians[CRITIC] - medians[HEADS_ALONE])
    return medians


def per_frame_costs(repeats: int) -> dict[str, float]:
    """Seconds per stored frame of what each arm encodes once per agent step (fp32, batch 1,
    as the loop acts): h for the frozen arm (and acting end to end); the cached tokens and h
    from them for each cache point."""
    obs = np.random.default_rng(0).integers(0, 256, (9, 84, 84), dtype=np.uint8)
    cpu = torch.device("cpu")
    frozen = SACAgent(make_encoder(), 2, SACConfig(), encoder_trainable=False)
    cached = {point: make_encoder(trainable_from=point) for point in CACHED}
    times = {name: [] for name in ("h", *CACHED)}
    for _ in range(repeats * 4):
        start = time.perf_counter()
        frozen.features(obs)
        times["h"].append(time.perf_counter() - start)
        for point, encoder in cached.items():
            start = time.perf_counter()
            features_of_tokens(encoder, cached_tokens(encoder, obs, cpu), cpu)
            times[point].append(time.perf_counter() - start)
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


def loop_rate(cfg: FinetuneConfig, steps: int, **changes) -> float:
    """Agent steps/s of semore-finetune's loop with ``changes`` (no evaluation, no reference)."""
    cfg = replace(
        cfg,
        num_train_steps=steps,
        num_seed_steps=min(cfg.num_seed_steps, steps // 4),
        eval_every_steps=10 * steps,
        num_eval_episodes=1,
        measure_reference=False,
        **changes,
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = finetune(cfg, "none", Path(tmp) / "run")
    return summary["steps_per_s"]


def print_arm_costs(times: dict, frame: dict, env_s: float, updates: int) -> None:
    """Seconds per agent step of each arm: simulator + per-frame encoding + its updates."""
    arms = {  # name: (per-frame encoding, update variant, the same arm unguided)
        FROZEN: (frame["h"], FROZEN, None),
        E2E: (frame["h"], E2E, None),
        GUIDED: (frame["h"], GUIDED, E2E),
    }
    for point, (plain, *guided) in CACHED.items():
        arms[plain] = (frame[point], plain, None)
        arms.update({name: (frame[point], name, plain) for name in guided})
    cost = {name: env_s + enc + updates * times[v] for name, (enc, v, _) in arms.items()}
    print(f"\ncost per agent step on one learner ({updates} updates per step; simulator "
          f"{1000 * env_s:.1f} ms, h of a frame {1000 * frame['h']:.1f} ms):")  # fmt: skip
    for name, (_, _, unguided) in arms.items():
        vs = f"   {cost[name] / cost[unguided]:5.2f}x unguided" if unguided else ""
        print(f"  {name:45s} {1000 * cost[name]:8.1f} ms   {cost[name] / cost[FROZEN]:5.2f}x "
              f"frozen{vs}")  # fmt: skip


def print_profile(batch_size: int, repeats: int) -> None:
    parts = profile_update(batch_size, repeats)
    total = sum(v for k, v in parts.items() if k not in (HEADS_ALONE, BACKWARD))
    print(f"\nwhere an end-to-end update's time goes (batch {batch_size}, channels-last + bf16):")
    for name, seconds in parts.items():
        print(f"  {name:45s} {1000 * seconds:8.1f} ms   {100 * seconds / total:5.1f}%")


def print_compile(cfg: FinetuneConfig, args) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--guide-batch-size", type=int, default=32)
    parser.add_argument("--updates-per-step", type=int, default=2, help="the matched learner's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="agent steps per loop run")
    parser.add_argument("--before-rev", default="8a63b5e", help="git revision ('' skips it)")
    parser.add_argument("--config", default="quickstart", help="finetune preset or YAML")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the encoder"
    )
    parser.add_argument("--no-loop", action="store_true", help="skip the loop's steps/s (4.)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_profile(args.batch_size, args.repeats)

    times = update_times(args)
    base = times[BEFORE] if BEFORE in times else times[E2E]
    print(f"\nSAC update at batch {args.batch_size}, 84x84x9 frame stacks (guide batch "
          f"{args.guide_batch_size}):")  # fmt: skip
    for name, seconds in times.items():
        print(f"  {name:45s} {1000 * seconds:8.1f} ms   {base / seconds:6.2f}x first")
    print("  (the fine-tuning loop uses channels-last always, bf16 with fabric.precision "
          "bf16-mixed)")  # fmt: skip

    cfg = load_config(FinetuneConfig, args.config, stage="finetune")
    bare = bare_env_rate(cfg, args.steps)
    print_arm_costs(times, per_frame_costs(args.repeats), 1.0 / bare, args.updates_per_step)
    if args.compile:
        print_compile(cfg, args)
    if args.no_loop:
        return 0
    matched = {"batch_size": args.batch_size, "update_every": 1,
               "updates_per_step": args.updates_per_step}  # fmt: skip
    print(f"\nagent steps/s ({args.config} preset on the matched learner: batch "
          f"{args.batch_size}, {args.updates_per_step} updates per step):")  # fmt: skip
    print(f"  {'bare simulator + render':45s} {bare:8.1f}")
    rates = {
        "fine-tuning loop, frozen": loop_rate(cfg, args.steps, encoder_mode="frozen", **matched),
    }
    for point in CACHED:
        rates[f"fine-tuning loop, finetune from {point}"] = loop_rate(
            cfg, args.steps, encoder_mode="finetune", encoder_trainable_from=point, **matched
        )
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:8.1f}   {rate / bare:5.2f}x bare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
