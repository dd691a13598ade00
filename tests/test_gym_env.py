"""``semore/Highway-v0``: the fine-tuning task through gymnasium, identical to the Driver's."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

import pipeline.finetune.gym_env  # noqa: F401  (registers the id)
from pipeline.config import load_config
from pipeline.finetune.config import FinetuneConfig
from pipeline.sim import make_env
from pipeline.sim.driver import Driver

SMALL = {"env": {"highway": {"image_height": 32, "image_width": 32, "max_episode_steps": 12}}}


def test_passes_the_gymnasium_checker():
    env = gym.make("semore/Highway-v0", overrides=SMALL)
    assert env.observation_space.shape == (9, 32, 32)
    assert env.observation_space.dtype == np.uint8
    assert env.action_space.shape == (2,)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_same_frames_rewards_and_endings_as_the_fine_tuning_driver():
    env = gym.make("semore/Highway-v0", overrides=SMALL)
    cfg = load_config(FinetuneConfig, "quickstart", SMALL, stage="finetune")
    sim = make_env(cfg.env)
    driver = Driver(sim, cfg.repeat, cfg.frame_stack)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=123)
    assert info["episode_seed"] == 123
    np.testing.assert_array_equal(obs, driver.reset(123).obs)
    for _ in range(12):
        action = rng.uniform(-0.3, 0.3, 2).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        step = driver.step(action)
        np.testing.assert_array_equal(obs, step.obs)
        assert reward == step.reward
        assert (terminated, truncated) == (step.terminated, step.truncated)
        if terminated or truncated:
            break
    assert terminated or truncated
    env.close()
    sim.close()


def test_module_prefixed_id_imports_the_module():
    env = gym.make("pipeline.finetune.gym_env:semore/Highway-v0", overrides=SMALL)
    assert env.reset(seed=1)[0].shape == (9, 32, 32)
    env.close()
