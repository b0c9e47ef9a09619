"""Online DPO on the built-in sentiment task from the SFT quickstart policy, CPU-sized.

python -m jaxrlhf online_dpo --config=configs/online_dpo/quickstart.py \
    --workdir=runs/online_dpo --config.policy_init=runs/sft --config.reward_init=runs/reward
    [--config.online_dpo.reward_source=gold]

30 rounds; each samples 4 responses to 64 prompts from the current policy, pairs each
prompt's best and worst by the reward model, and takes 4 DPO steps of 32 pairs on them
(120 DPO steps, as configs/dpo/quickstart.py takes on its fixed pairs).
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 10          # DPO optimizer steps
    c.train.steps = 30                 # rounds
    c.train.log_every = 1
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.online_dpo.samples_per_prompt = 4
    c.online_dpo.prompts_per_round = 64
    c.online_dpo.steps_per_round = 4
    c.dpo.beta = 0.1
    return c
