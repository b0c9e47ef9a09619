"""RLOO on the built-in sentiment task: PPO's program with the leave-one-out baseline of
Ahmadian et al. (2024) and no value model, the KL penalty in the reward, CPU-sized.

python -m jaxrlhf ppo --config=configs/rloo/quickstart.py --workdir=runs/rloo \
    --config.policy_init=runs/sft --config.reward_init=runs/reward
"""
import os

from jaxrlhf.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "ppo", "quickstart.py"))
    c.ppo.advantage = "rloo"
    c.ppo.num_generations = 4          # 64 responses = 16 prompts x 4
    return c
