"""The alignment tax and PPO-ptx (Ouyang et al. 2022, InstructGPT, eq. 2 and Sec. 4.2),
CPU-sized.

PPO from one SFT policy against the reward model trained on ``proxy_pairs`` pairs (the
quickstart reward model), with the pretraining-mix coefficient at each of ``ptx_coefs``
(0 = plain PPO), ``seeds`` each. The tax is the rise of the policy's LM loss on
``heldout_demos`` held-out demonstrations (seed ``heldout_seed``) over the SFT policy's.

    python -m experiments.ptx_alignment_tax.run [--config=configs/experiments/ptx_alignment_tax.py:smoke]
"""
import os

from jaxrlhf.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.ptx_coefs = (0.0, 0.03, 0.1, 0.3, 1.0)
    c.proxy_pairs = 2048
    c.seeds = (0, 1, 2)
    c.heldout_demos = 512
    c.heldout_seed = 10_001
    if size == "smoke":
        c.ptx_coefs = (0.0, 0.1)
        c.proxy_pairs = 64
        c.seeds = (0,)
        c.heldout_demos = 32
    return c
