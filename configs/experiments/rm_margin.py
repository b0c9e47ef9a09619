"""A margin in the ranking loss (Touvron et al. 2023, Llama 2, eq. 2), CPU-sized.

Reward models on pairs of SFT-policy samples labelled by the larger gold reward
(``reward.label_mode=max``), each pair carrying ``margin = g_chosen - g_rejected``; trained
with and without the margin term, ``seeds`` each. Held out: ``heldout_pairs`` fresh pairs
(seed ``heldout_seed``) binned by gold margin at ``margin_bins``.

    python -m experiments.rm_margin.run [--config=configs/experiments/rm_margin.py:smoke]
"""
import os

from jaxrlhf.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.reward.reward.label_mode = "max"
    c.seeds = (0, 1, 2)
    c.heldout_pairs = 2048
    c.heldout_seed = 10_000
    # Gold-margin bin edges (right-inclusive), from "negligibly" to "significantly" better.
    c.margin_bins = (0.0, 0.25, 0.5, 1.0, 2.0)
    if size == "smoke":
        c.seeds = (0,)
        c.heldout_pairs = 64
    return c
