"""The main job: SFT -> reward model -> PPO on the built-in sentiment task, CPU-sized.

Each stage is its quickstart config; override one with e.g. --config.ppo.train.steps=80.
"""
import os

import ml_collections

from jaxrlhf.config import load_config_file

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = ml_collections.ConfigDict()
    for stage in ("sft", "reward", "ppo"):
        c[stage] = load_config_file(os.path.join(CONFIGS, stage, "quickstart.py"))
    return c
