"""Best-of-16 on the built-in sentiment task's held-out prompts, CPU-sized.

python -m jaxrlhf bon --checkpoint=runs/sft --reward=runs/reward --n=16 --workdir=runs/bon \
    [--config=configs/bon/quickstart.py]
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.bon.n = 16
    c.bon.num_prompts = 128
    return c
