"""Episode seeds and random streams of every stage, in one place.

Every seed is a pure function of (config seed, stream, index) through numpy's
``SeedSequence``, so it does not depend on scheduling (workers, resumes, evaluation cadence).
The formulas are frozen: datasets on disk record the episode seeds they were made with, and
fine-tuning runs resume against seeds drawn before (``tests/test_seeding.py`` pins values).

- Collection (``semore-collect``): episode ``e`` of a dataset seeded ``seed`` runs on
  :func:`collect_episode_seed`, its policy draws from :func:`collect_policy_rng`.
- Fine-tuning (``semore-finetune``): training episodes, evaluation episodes and the loop's own
  numpy generator are separate streams (:data:`TRAIN`, :data:`EVAL`, :data:`LOOP`); evaluation
  episodes lie in a seed range disjoint from training ones, so they never repeat a training
  episode, and are the same for every training seed.
"""

from __future__ import annotations

import numpy as np

# Stream ids of fine-tuning: training episodes, evaluation episodes, the loop's numpy RNG,
# and the evaluation's own generators (torch and numpy), kept apart from the training ones so
# that how often a run evaluates never changes what it trains on.
TRAIN, EVAL, LOOP, EVAL_RNG = 0, 1, 2, 3
# Fine-tuning episode seeds of stream s lie in [s * 2^30, (s + 1) * 2^30): training seeds in
# [0, 2^30), evaluation seeds in [2^30, 2^31), all below 2^31 as simulators expect.
SEED_RANGE = 1 << 30


def _draw(*entropy: int) -> int:
    """One 32-bit word of the SeedSequence of ``entropy``."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def collect_episode_seed(seed: int, episode: int) -> int:
    """The 31-bit simulator seed of dataset episode ``episode`` (global index)."""
    return _draw(seed, episode) >> 1


def collect_policy_rng(seed: int, episode: int) -> np.random.Generator:
    """The collection policy's generator for dataset episode ``episode``."""
    return np.random.default_rng([seed, episode, 1])


def episode_seed(seed: int, stream: int, index: int) -> int:
    """The 31-bit simulator seed of fine-tuning episode ``index`` of ``stream``."""
    return stream * SEED_RANGE + _draw(seed, stream, index) % SEED_RANGE


def train_episode_seed(seed: int, index: int) -> int:
    """The seed of training episode ``index`` of a run seeded ``seed``."""
    return episode_seed(seed, TRAIN, index)


def eval_seeds(eval_seed: int, num_episodes: int) -> list[int]:
    """The evaluation episodes' seeds: the same for every training seed and every evaluation."""
    return [episode_seed(eval_seed, EVAL, i) for i in range(num_episodes)]


def loop_rng(seed: int) -> np.random.Generator:
    """The fine-tuning loop's generator (seed-step actions, replay sampling)."""
    return np.random.default_rng([seed, LOOP])


def eval_torch_seed(seed: int, eval_step: int) -> int:
    """The torch seed of the evaluation at agent step ``eval_step``: fixed by the run seed and
    the step, whatever evaluations came before."""
    return _draw(seed, EVAL_RNG, eval_step)


def reference_rng(eval_seed: int, num_episodes: int) -> np.random.Generator:
    """The uniform-random reference policy's generator on the evaluation episodes."""
    return np.random.default_rng([eval_seed, num_episodes])
