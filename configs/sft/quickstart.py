"""SFT on the built-in synthetic sentiment task: a 2-layer GPT-2, CPU-sized (< 3 min)."""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.train.steps = 600
    c.train.eval_every = 150
    c.train.checkpoint_every = 150
    return c
