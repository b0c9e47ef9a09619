"""The built-in task's DPO gap, diagnosed: ``configs/experiments/algorithms_frontier.py``'s
PPO and DPO points again, with the pair recipe of Rafailov et al. (2023, §6.1) — 4 SFT
samples per prompt, all 6 pairs of them, each labelled by the larger gold reward (exact
ties dropped) — for the reward model PPO optimises and for DPO alike, at the same 2,048
training pairs (342 prompts instead of 2,048), and an evaluation every 20 DPO steps and
every 5 PPO iterations, each a point.

    python -m experiments.algorithms_frontier_recipe.run [--config=...:smoke]
"""
import os

from jaxrlhf.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = dict(samples_per_prompt=4, pairs_per_prompt=0, label_mode="max")


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"algorithms_frontier.py:{size}"))
    for name in ("grpo", "rloo", "ipo", "bon"):
        del c[name]
        del c.strengths[name]
    c.reward.reward.update(RECIPE)
    c.dpo.reward.update(RECIPE)
    if size == "full":
        c.dpo.train.update(eval_every=20, checkpoint_every=20)
        c.ppo.train.update(eval_every=5, checkpoint_every=5)
    return c
