"""GRPO on the built-in sentiment task: PPO's program with group-normalised advantages and
no value model, KL as a k3 loss term (Shao et al. 2024), CPU-sized.

python -m jaxrlhf ppo --config=configs/grpo/quickstart.py --workdir=runs/grpo \
    --config.policy_init=runs/sft --config.reward_init=runs/reward
"""
import os

from jaxrlhf.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "ppo", "quickstart.py"))
    c.ppo.advantage = "grpo"
    c.ppo.num_generations = 8          # 64 responses = 8 prompts x 8
    c.ppo.kl_in_reward = False         # KL(pi || pi_sft) as a loss term ...
    c.ppo.kl_estimator = "k3"          # ... with the k3 estimator, beta 0.04 (DeepSeekMath)
    c.ppo.kl_coef = 0.04
    c.ppo.ppo_epochs = 1               # one update per minibatch of each batch (mu = 1)
    return c
