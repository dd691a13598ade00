"""SAC update cost and fine-tuning throughput per arm, measured side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/rl_update.py [--batch-size 128] [--repeats 5]
        [--updates-per-step 1] [--steps 200] [--config quickstart] [--no-loop]

1. Where an end-to-end update's time goes, for each trunk (channels-last + bf16, as the
   presets run it): the DrQ shifts, the encoder's forward of ``obs`` (with gradient) and of
   ``next_obs``, its backward, and the heads (critic, actor, temperature) alone.
2. Update time at ``--batch-size`` on 84x84 frame stacks, every variant timed round-robin (one
   update of each per repeat, so load from other processes weighs on all alike): the frozen
   arm on cached features; Semore end to end from the pixels with each trunk (the DrQ trunk,
   the default; strided4 and ATC's strided, cheaper but lower on tuning seeds); guided end to end (a guide batch of
   ``--guide-batch-size`` from memory: PNG decoding is not timed); DrQ-v2's encoder end to
   end; and the cached-token variants (``encoder_trainable_from``), plain and guided.
3. Cost per agent step of each arm on one matched learner (``--updates-per-step`` updates per
   step, the study of record's 1): the simulator step, what the arm encodes per stored frame
   to act, and its updates; ratios against the frozen arm.
4. Agent steps/s of ``semore-finetune``'s own loop on that learner, frozen and from the pixels
   (Semore on the default trunk, DrQ-v2), against the bare simulator.

Ratios are what to compare: the machine's speed varies from day to day.
"""

from __future__ import annotations

import argparse
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
from semore.baselines import make_encoder  # noqa: E402
from semore.encoder import EncoderConfig  # noqa: E402
from semore.guide import PretrainGuide  # noqa: E402
from semore.heads import SemorePretrainModel  # noqa: E402
from semore.losses import SemorePretrainLoss  # noqa: E402
from semore.sac import SACAgent, SACConfig  # noqa: E402
from semore.trunk_cache import cached_tokens, features_of_tokens, tokens_to_cache  # noqa: E402

FROZEN = "frozen (cached features)"
E2E = "end to end, DrQ trunk (default)"
E2E_S4 = "end to end, strided4 trunk"
E2E_ATC = "end to end, strided trunk (ATC's)"
GUIDED = "guided end to end, DrQ trunk"
DRQV2 = "DrQ-v2 encoder end to end"
# encoder_trainable_from: (plain, guided on guide tokens), on the default trunk
CACHED = {
    "interaction": ("from interaction, tokens cached", "guided from interaction, cached"),
    "projection": ("from projection, tokens cached", "guided from projection, cached"),
}
TRUNK_OF = {E2E: "drq", E2E_S4: "strided4", E2E_ATC: "strided"}  # the profiled trunks
SHIFTS = "DrQ shifts of obs and next_obs"
CRITIC = "critic step incl. encoder backward"
HEADS_ALONE = "critic step, heads alone (h detached)"
BACKWARD = "encoder backward (difference of the two)"


def encoder_of(kind: str = "semore", trunk: str = "drq", trainable_from: str = "trunk"):
    """A fresh 84x84x3-frame encoder, channels-last as the loop runs it."""
    torch.manual_seed(0)
    encoder = make_encoder(EncoderConfig(kind=kind, trunk=trunk))
    encoder = encoder.to(memory_format=torch.channels_last)
    if trainable_from != "trunk":
        encoder.freeze_below(trainable_from)
    return encoder


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


def token_batch_of(batch: dict, encoder) -> dict[str, torch.Tensor]:
    """``batch`` with the frame stacks replaced by their cached tokens (float16)."""
    out = {k: v for k, v in batch.items() if k not in ("obs", "next_obs")}
    for key in ("obs", "next_obs"):
        out[f"{key}_tokens"] = tokens_to_cache(encoder, batch[key]).flatten(1).half()
    return out


def guide_for(encoder, batch_size: int, tokens: bool = False) -> PretrainGuide:
    """A guide on one fixed in-memory batch (CLIP-sized embeddings), so only compute is timed;
    ``tokens``: its frames as the frozen trunk's tokens (``guide.cache_tokens``)."""
    g = torch.Generator().manual_seed(1)
    motion_dim = len(schema.MOTION_TARGETS)
    emb = torch.nn.functional.normalize(torch.randn(2, batch_size, 512, generator=g), dim=-1)
    guide_batch = {
        "obs": torch.randint(0, 256, (batch_size, 9, 84, 84), generator=g, dtype=torch.uint8),
        "action": torch.rand(batch_size, 2, generator=g) * 2 - 1,
        "emb_sem": emb[0],
        "emb_mot": emb[1],
        "motion": torch.randn(batch_size, motion_dim, generator=g),
        "reward": torch.randn(batch_size, generator=g),
    }
    if tokens:
        obs = guide_batch.pop("obs").float()
        guide_batch["obs_tokens"] = tokens_to_cache(encoder, obs).flatten(1).half()
    model = SemorePretrainModel(encoder, 512, motion_dim, 2)
    return PretrainGuide(
        model, SemorePretrainLoss(), lambda drawn: repeat(guide_batch), 1.0, 1, 3e-4, 4
    )


def agent_of(encoder, guide_batch_size: int = 0, guide_tokens: bool = False, **kw) -> SACAgent:
    guide = None
    if guide_batch_size:

        def guide(enc):
            return guide_for(enc, guide_batch_size, guide_tokens)

    return SACAgent(encoder, 2, SACConfig(), guide=guide, **kw)


def one_update(agent: SACAgent, batch: dict, step: int) -> float:
    """Seconds of one update under bf16 autocast (fabric.precision bf16-mixed)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        agent.update(batch, step)
    return time.perf_counter() - start


def update_variants(args) -> dict[str, tuple[SACAgent, dict]]:
    """name: (agent, batch) of every timed update variant."""
    frames = batch_of(args.batch_size, 50, False)
    features = batch_of(args.batch_size, 50, True)
    variants = {
        FROZEN: (agent_of(encoder_of(), encoder_trainable=False), features),
        E2E: (agent_of(encoder_of()), frames),
        E2E_S4: (agent_of(encoder_of(trunk="strided4")), frames),
        E2E_ATC: (agent_of(encoder_of(trunk="strided")), frames),
        GUIDED: (agent_of(encoder_of(), args.guide_batch_size), frames),
        DRQV2: (agent_of(encoder_of("drqv2")), frames),
    }
    for point, (plain, guided) in CACHED.items():
        encoder = encoder_of(trainable_from=point)
        batch = token_batch_of(frames, encoder)
        variants[plain] = (agent_of(encoder), batch)
        guided_encoder = encoder_of(trainable_from=point)
        variants[guided] = (agent_of(guided_encoder, args.guide_batch_size, True), batch)
    return variants


def update_times(args) -> dict[str, float]:
    """Median seconds per update of each variant, timed round-robin."""
    variants = update_variants(args)
    for agent, batch in variants.values():
        one_update(agent, batch, 0)  # warm-up
    times = {name: [] for name in variants}
    for step in range(1, args.repeats + 1):
        for name, (agent, batch) in variants.items():
            times[name].append(one_update(agent, batch, step))
    return {name: float(np.median(t)) for name, t in times.items()}


def profile_update(trunk: str, batch_size: int, repeats: int) -> dict[str, float]:
    """Median seconds of each part of an end-to-end update (channels-last + bf16)."""
    agent = agent_of(encoder_of(trunk=trunk))
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
    """Seconds per stored frame of what each arm encodes to act (fp32, batch 1, as the loop
    acts): h from the pixels for each encoder; cached tokens and h from them per cache point."""
    obs = np.random.default_rng(0).integers(0, 256, (9, 84, 84), dtype=np.uint8)
    cpu = torch.device("cpu")
    encoders = {
        "drq": encoder_of(),
        "strided4": encoder_of(trunk="strided4"),
        "strided": encoder_of(trunk="strided"),
        "drqv2": encoder_of("drqv2"),
    }
    acting = {name: agent_of(enc, encoder_trainable=False) for name, enc in encoders.items()}
    cached = {point: encoder_of(trainable_from=point) for point in CACHED}
    times = {name: [] for name in (*acting, *cached)}
    for _ in range(repeats * 4):
        for name, agent in acting.items():
            start = time.perf_counter()
            agent.features(obs)
            times[name].append(time.perf_counter() - start)
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


def arm_costs(times: dict, frame: dict, env_s: float, updates: int) -> dict[str, float]:
    """Seconds per agent step of each arm: simulator + acting encoder pass + its updates."""
    acting = {FROZEN: "drq", E2E: "drq", E2E_S4: "strided4", E2E_ATC: "strided"}
    acting.update({GUIDED: "drq", DRQV2: "drqv2"})
    acting.update({name: point for point, names in CACHED.items() for name in names})
    return {name: env_s + frame[acting[name]] + updates * times[name] for name in times}


def print_table(title: str, values: dict[str, float], base: float, unit: str) -> None:
    print(f"\n{title}")
    for name, value in values.items():
        print(f"  {name:45s} {1000 * value:8.1f} {unit}   {value / base:6.2f}x frozen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--guide-batch-size", type=int, default=32)
    parser.add_argument("--updates-per-step", type=int, default=1, help="the learner's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="agent steps per loop run")
    parser.add_argument("--config", default="quickstart", help="finetune preset or YAML")
    parser.add_argument("--no-loop", action="store_true", help="skip the loop's steps/s (4.)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, trunk in TRUNK_OF.items():
        parts = profile_update(trunk, args.batch_size, args.repeats)
        total = sum(v for k, v in parts.items() if k not in (HEADS_ALONE, BACKWARD))
        print(f"\nwhere an update's time goes, {name} (batch {args.batch_size}, bf16):")
        for part, seconds in parts.items():
            print(f"  {part:45s} {1000 * seconds:8.1f} ms   {100 * seconds / total:5.1f}%")

    times = update_times(args)
    print_table(
        f"SAC update at batch {args.batch_size}, 84x84x9 frame stacks, channels-last + bf16 "
        f"(guide batch {args.guide_batch_size}):",
        times, times[FROZEN], "ms",
    )  # fmt: skip
    cfg = load_config(FinetuneConfig, args.config, stage="finetune")
    bare = bare_env_rate(cfg, args.steps)
    frame = per_frame_costs(args.repeats)
    costs = arm_costs(times, frame, 1.0 / bare, args.updates_per_step)
    print_table(
        f"cost per agent step ({args.updates_per_step} update(s) per step; simulator "
        f"{1000 / bare:.1f} ms, h of a frame: drq {1000 * frame['drq']:.1f} ms, "
        f"strided4 {1000 * frame['strided4']:.1f} ms, DrQ-v2 {1000 * frame['drqv2']:.1f} ms):",
        costs, costs[FROZEN], "ms",
    )  # fmt: skip
    if args.no_loop:
        return 0
    learner = {"batch_size": args.batch_size, "update_every": 1,
               "updates_per_step": args.updates_per_step}  # fmt: skip
    rates = {
        FROZEN: loop_rate(cfg, args.steps, encoder_mode="frozen", **learner),
        E2E: loop_rate(
            cfg, args.steps, encoder_mode="finetune",
            encoder=replace(cfg.encoder, trunk=TRUNK_OF[E2E]), **learner,
        ),
        DRQV2: loop_rate(
            cfg, args.steps, encoder_mode="finetune", encoder=replace(cfg.encoder, kind="drqv2"),
            **learner,
        ),
    }  # fmt: skip
    print(f"\nagent steps/s of semore-finetune's loop ({args.config} preset, batch "
          f"{args.batch_size}, {args.updates_per_step} update(s) per step; bare simulator "
          f"{bare:.1f}):")  # fmt: skip
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:8.2f}   {rates[FROZEN] / rate:6.2f}x frozen's time per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
