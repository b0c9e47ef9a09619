"""Reward model on the built-in sentiment task, pairs labelled by its gold reward (CPU-sized).

Standalone it pairs the task's demonstrations; with --config.policy_init=SFT_WORKDIR it
samples two responses per prompt from that SFT policy and starts from its weights.
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.optim.learning_rate = 3e-4
    c.train.steps = 300
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    return c
