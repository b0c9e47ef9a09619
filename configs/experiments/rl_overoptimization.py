"""Reward-model overoptimisation under RL (Gao, Schulman & Hilton 2022, Fig. 1b), CPU-sized.

PPO without a KL penalty against proxy reward models trained on ``proxy_pairs`` gold-labelled
pairs, ``seeds`` PPO seeds each; gold and proxy evaluated every ``ppo.train.eval_every``
iterations. Scale up through the stage configs (``--config.sft.model.d_model=256``,
``--config.ppo.train.steps=400``) on an accelerator.

    python -m experiments.rl_overoptimization.run [--config=configs/experiments/rl_overoptimization.py:smoke]
"""
import os

from jaxrlhf.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.proxy_pairs = (64, 128, 256, 1024)
    c.seeds = (0, 1, 2)
    c.ppo.ppo.kl_coef = 0.0
    c.ppo.train.update(steps=100, eval_every=5, log_every=5, checkpoint_every=50)
    if size == "smoke":
        c.proxy_pairs = (32, 64)
        c.seeds = (0,)
        c.ppo.train.update(steps=4, eval_every=1, log_every=1, checkpoint_every=4)
    return c
