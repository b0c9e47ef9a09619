"""PPO on the built-in sentiment task, CPU-sized.

python -m jaxrlhf ppo --config=configs/ppo/quickstart.py --workdir=runs/ppo \
    --config.policy_init=runs/sft --config.reward_init=runs/reward
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.train.steps = 40
    c.train.log_every = 2
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.optim.learning_rate = 3e-4
    c.optim.eps = 1e-5                 # PPO detail 16
    c.train.batch_size = 64            # responses per iteration
    c.ppo.num_minibatches = 4
    c.ppo.ppo_epochs = 4
    return c
