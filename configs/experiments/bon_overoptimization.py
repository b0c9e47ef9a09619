"""Reward-model overoptimisation with best-of-n (Gao, Schulman & Hilton 2022, Fig. 1a),
CPU-sized.

One pool of ``bon.n`` samples of the SFT policy for each of ``bon.num_prompts`` held-out
prompts, scored by proxy reward models trained on ``proxy_pairs`` gold-labelled pairs (the
proxies of ``rl_overoptimization``, shared when the stage configs match); best-of-n for
n = 1, 2, 4, ..., ``bon.n`` estimated without bias from the pool. Scale up through the stage
configs and ``--config.bon.bon.n=4096`` on an accelerator.

    python -m experiments.bon_overoptimization.run [--config=configs/experiments/bon_overoptimization.py:smoke]
"""
import os

from jaxrlhf.config import base_config, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.proxy_pairs = (64, 128, 256, 1024)
    c.bon = base_config()
    c.bon.train.tensorboard = False
    c.bon.bon.update(n=512, num_prompts=128, split="eval", batch_size=1024)
    if size == "smoke":
        c.proxy_pairs = (32, 64)
        c.bon.bon.update(n=8, num_prompts=16, batch_size=64)
        c.bon.sampling.response_length = 12
    return c
