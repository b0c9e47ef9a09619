"""The reward-KL frontier (Ziegler et al. 2019; Stiennon et al. 2020), CPU-sized.

PPO from one SFT policy at each of ``kl_coefs`` (fixed beta, k1 penalty in the reward),
against a reward model trained on ``proxy_pairs`` gold-labelled pairs and against the gold
reward itself, ``seeds`` PPO seeds each. Both use a value model from the policy, so the
reward is the only difference. Scale up through the stage configs on an accelerator.

    python -m experiments.kl_frontier.run [--config=configs/experiments/kl_frontier.py:smoke]
"""
import os

from jaxrlhf.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.kl_coefs = (0.01, 0.03, 0.1, 0.3, 1.0)
    c.reward_sources = ("model", "gold")
    c.proxy_pairs = 256
    c.seeds = (0, 1, 2)
    c.ppo.ppo.value_init = "policy"
    if size == "smoke":
        c.kl_coefs = (0.01, 1.0)
        c.proxy_pairs = 64
        c.seeds = (0,)
    return c
