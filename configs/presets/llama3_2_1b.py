"""The Llama-3.2-1B shape (1.24B parameters, llama3 RoPE scaling), at an accelerator-sized experiment shape
(`jaxrlhf.config.preset_config`).

Random init; `--config.model_init=DIR` loads a local HF checkpoint of this shape (pass
`--config.data.tokenizer=DIR` for its tokenizer). Any stage: `python -m jaxrlhf sft
--config=configs/presets/llama3_2_1b.py --workdir=W`; `--dry_run` compiles the stage's step
and prints its peak memory per device without running it; `FILE.py:ppo` gives PPO's
batch of 256 prompts.
"""
from jaxrlhf.config import preset_config


def get_config(stage: str = "sft"):
    return preset_config("llama3_2_1b", stage)
