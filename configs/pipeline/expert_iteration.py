"""Rejection-sampling fine-tuning (expert iteration) on the built-in sentiment task:
SFT -> reward model -> best-of-16 on PPO's training prompts -> SFT of the SFT policy on the
chosen responses, CPU-sized.

python -m jaxrlhf pipeline --config=configs/pipeline/expert_iteration.py --workdir=runs/ei

The last stage reports the gold reward and KL of its policy from the SFT policy, as PPO
does (``DIR/rs_sft/summary.json``).
"""
import os

import ml_collections

from jaxrlhf.config import load_config_file

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = ml_collections.ConfigDict()
    for stage in ("sft", "reward", "bon"):
        c[stage] = load_config_file(os.path.join(CONFIGS, stage, "quickstart.py"))
    c.bon.bon.split = "train"
    c.bon.bon.num_prompts = 1024
    c.rs_sft = load_config_file(os.path.join(CONFIGS, "sft", "quickstart.py"))
    c.rs_sft.train.steps = 100
    c.rs_sft.train.eval_every = 50
    c.rs_sft.train.checkpoint_every = 50
    c.rs_sft.optim.learning_rate = 3e-4
    c.rs_sft.data.num_eval = 128        # the last 128 chosen responses are held out
    c.stages = (("sft", "sft"), ("reward", "reward"), ("bon", "bon"), ("rs_sft", "sft"))
    return c
