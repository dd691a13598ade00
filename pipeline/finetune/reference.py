"""Reference scores of a task: the built-in expert's and uniform-random returns on the
evaluation seeds, so that any return R reads as the expert-normalised score
``(R - R_random) / (R_expert - R_random)`` (0 = random, 1 = expert).

``semore-reference --config quickstart --out reference.json`` computes them on their own;
``semore-finetune`` computes them once per run folder (or takes them from the folder that
``--shared-reference`` names: a study's runs share one measurement) and adds
``normalized_return`` to every evaluation row.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import cli
from pipeline.config import content_dict, load_config
from pipeline.data import manifest as mf
from pipeline.errors import SemoreError
from pipeline.files import atomic_write
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.eval import evaluate
from pipeline.sim import backend_spec, make_env
from pipeline.sim.base import ACTION_DIM
from pipeline.sim.driver import Driver
from pipeline.sim.seeding import eval_seeds, reference_rng

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference.json"


@dataclass
class ReferenceScores:
    """Mean returns of the expert and of uniform random actions on ``eval_seeds``."""

    expert_return: float
    random_return: float
    eval_seeds: list[int]
    task_hash: str  # the env, action repeat and frame stack they were measured on
    expert: dict  # every evaluation metric of the expert
    random: dict

    def normalize(self, episode_return: float) -> float:
        """(R - R_random) / (R_expert - R_random)."""
        span = self.expert_return - self.random_return
        return float((episode_return - self.random_return) / span) if span else float("nan")


def task_hash(cfg: FinetuneConfig) -> str:
    """What reference scores depend on: the simulator, action repeat and evaluation seeds."""
    task = {
        "env": content_dict(cfg.env),
        "repeat": cfg.repeat,
        "eval_seeds": eval_seeds(cfg.eval_seed, cfg.num_eval_episodes),
    }
    return mf.config_hash(task)


def compute_reference(cfg: FinetuneConfig, driver: Driver) -> ReferenceScores:
    """Run the expert and uniform random actions on the evaluation episodes of ``cfg``."""
    seeds = eval_seeds(cfg.eval_seed, cfg.num_eval_episodes)
    expert = evaluate(driver, lambda obs: None, seeds)  # None: the backend's expert drives
    rng = reference_rng(cfg.eval_seed, len(seeds))

    def uniform(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, ACTION_DIM).astype(np.float32)

    random = evaluate(driver, uniform, seeds)
    return ReferenceScores(
        expert_return=expert["episode_return"],
        random_return=random["episode_return"],
        eval_seeds=seeds,
        task_hash=task_hash(cfg),
        expert=expert,
        random=random,
    )


def load_reference(path: Path, cfg: FinetuneConfig) -> ReferenceScores | None:
    """The scores saved at ``path`` if they were measured on ``cfg``'s task, else None."""
    if not path.is_file():
        return None
    try:
        saved = ReferenceScores(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise SemoreError(
            f"{path} is not a reference-scores file ({err}): expected one written by "
            "semore-reference or semore-finetune (delete it to recompute)"
        ) from None
    return saved if saved.task_hash == task_hash(cfg) else None


def shared_reference_path(folder: Path, cfg: FinetuneConfig) -> Path:
    """Where a folder of scores shared by several runs (a study's) keeps ``cfg``'s task."""
    return folder / f"reference-{task_hash(cfg)[:16]}.json"


def reference_for(
    cfg: FinetuneConfig, driver: Driver, path: Path, shared: Path | None = None
) -> ReferenceScores:
    """Saved scores of this task from ``path``, or computed now and saved there.

    ``shared``: a folder of scores shared by runs on the same task (a study's runs measure
    the expert once, not once per run, ~10 s each): read from it when ``path`` has none, and
    written to it when computed. Two runs that start together may both compute; the scores
    are deterministic and each write is atomic, so either file is the same.
    """
    scores = load_reference(path, cfg)
    common = shared_reference_path(shared, cfg) if shared is not None else None
    if scores is None and common is not None:
        scores = load_reference(common, cfg)
        if scores is not None:
            _save(path, scores)
    if scores is None:
        log.info(
            "measuring expert and random returns on %d evaluation episodes",
            len(eval_seeds(cfg.eval_seed, cfg.num_eval_episodes)),
        )
        scores = compute_reference(cfg, driver)
        for where in (path, common):
            if where is not None:
                _save(where, scores)
    log.info(
        "reference returns: expert %.1f, random %.1f", scores.expert_return, scores.random_return
    )
    return scores


def _save(path: Path, scores: ReferenceScores) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(scores), indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(
        "semore-reference",
        "Expert and uniform-random returns on a fine-tuning config's evaluation episodes.",
    )
    parser.add_argument("--config", required=True, help="finetune YAML file or preset name")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--num-eval-episodes", type=cli.positive_int, help="evaluation episodes (default: config)"
    )
    return parser


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = load_config(FinetuneConfig, args.config, overrides, stage="finetune")
    if args.num_eval_episodes is not None:
        cfg = replace(cfg, num_eval_episodes=args.num_eval_episodes)
    env = make_env(cfg.env)
    try:
        driver = Driver(env, cfg.repeat, cfg.frame_stack, backend_spec(cfg.env).max_retries)
        scores = reference_for(cfg, driver, args.out)
    finally:
        env.close()
    print(
        f"{args.out}: expert return {scores.expert_return:.1f}, random return "
        f"{scores.random_return:.1f} over {len(scores.eval_seeds)} evaluation episodes"
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
