"""SFT on the built-in ``arithmetic`` task (2-digit addition, ``jaxrlhf.tasks.arithmetic``):
a 2-layer GPT-2 on 4,096 demonstrations ``"37+85=" -> "122"``, CPU-sized, stopped while the
policy is right only part of the time, so that RL on the exact-match reward has room.

python -m jaxrlhf sft --config=configs/sft/arithmetic.py --workdir=runs/arithmetic_sft
"""
from jaxrlhf.config import base_config

DIGITS = 2                        # jaxrlhf.tasks.arithmetic.ArithmeticTask's default
SAMPLING = dict(prompt_length=2 * DIGITS + 2,        # "99+99="
                response_length=DIGITS + 3,          # up to DIGITS + 1 answer digits, EOS
                temperature=1.0, num_eval_prompts=256)


def get_config():
    c = base_config()
    c.data.update(task="arithmetic", max_len=16, num_train=4096, num_eval=256)
    c.sampling.update(SAMPLING)
    c.train.update(steps=1200, batch_size=32, eval_every=300, checkpoint_every=300,
                   sample_tokens=SAMPLING["response_length"])
    return c
