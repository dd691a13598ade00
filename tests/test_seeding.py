"""Episode seeds of collection and fine-tuning (pipeline.sim.seeding): pinned values, so that
datasets and runs made before keep resuming on the seeds they were made with."""

from __future__ import annotations

import numpy as np

from pipeline.sim import seeding


def test_collection_episode_seeds_are_pinned():
    seeds = [seeding.collect_episode_seed(s, e) for s, e in ((0, 0), (0, 1), (7, 3), (123, 99))]
    assert seeds == [1484405855, 1982462498, 1733098030, 1999140383]
    draws = seeding.collect_policy_rng(0, 3).uniform(-1.0, 1.0, 2)
    assert np.allclose(draws, [-0.93466815, 0.61178029])


def test_finetune_episode_seeds_are_pinned():
    assert [seeding.train_episode_seed(0, i) for i in range(2)] == [821328062, 609976258]
    assert seeding.episode_seed(5, seeding.TRAIN, 2) == 1060583153
    assert seeding.eval_seeds(0, 3) == [1817441348, 1974985039, 1736571394]
    assert seeding.eval_seeds(4, 2) == [1497189180, 1246962428]
    assert np.allclose(seeding.loop_rng(0).uniform(-1.0, 1.0, 2), [-0.83835192, -0.19512442])


def test_evaluation_seeds_are_fixed_and_disjoint_from_training_seeds():
    train = {seeding.train_episode_seed(seed, i) for seed in range(3) for i in range(200)}
    evals = seeding.eval_seeds(0, 10)
    assert evals == seeding.eval_seeds(0, 10) and len(set(evals)) == 10
    assert all(seeding.SEED_RANGE <= s < 2 * seeding.SEED_RANGE for s in evals)
    assert all(s < seeding.SEED_RANGE for s in train)
    assert not train & set(evals)


def test_evaluation_torch_seed_depends_only_on_run_seed_and_step():
    assert seeding.eval_torch_seed(0, 400) == seeding.eval_torch_seed(0, 400)
    assert seeding.eval_torch_seed(0, 400) != seeding.eval_torch_seed(0, 600)
    assert seeding.eval_torch_seed(0, 400) != seeding.eval_torch_seed(1, 400)
