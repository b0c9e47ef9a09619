"""DPO on the built-in sentiment task from the SFT quickstart policy, CPU-sized.

python -m jaxrlhf dpo --config=configs/dpo/quickstart.py --workdir=runs/dpo \
    --config.policy_init=runs/sft [--config.dpo.loss=ipo --config.dpo.beta=0.1]

The pairs are the reward model's (config.reward.*): two SFT samples per prompt, labelled
by the task's gold reward.
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 10
    c.train.steps = 120
    c.train.log_every = 10
    c.train.eval_every = 40
    c.train.checkpoint_every = 40
    c.dpo.beta = 0.1
    return c
