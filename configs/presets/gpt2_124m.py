"""GPT-2 small (124M parameters), at an accelerator-sized experiment shape
(`jaxrlhf.config.preset_config`).

Random init; `--config.model_init=DIR` loads a local HF checkpoint of this shape (pass
`--config.data.tokenizer=DIR` for its tokenizer). Any stage: `python -m jaxrlhf sft
--config=configs/presets/gpt2_124m.py --workdir=W`; `--dry_run` compiles the stage's step
and prints its peak memory per device without running it; `FILE.py:ppo` gives PPO's
batch of 256 prompts.
"""
from jaxrlhf.config import preset_config


def get_config(stage: str = "sft"):
    return preset_config("gpt2_124m", stage)
