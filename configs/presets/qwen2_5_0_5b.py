"""The Qwen2.5-0.5B shape (494M parameters), at an accelerator-sized experiment shape
(`jaxrlhf.config.preset_config`).

Random init; `--config.model_init=DIR` loads a local HF checkpoint of this shape (pass
`--config.data.tokenizer=DIR` for its tokenizer). Any stage: `python -m jaxrlhf sft
--config=configs/presets/qwen2_5_0_5b.py --workdir=W`; `--dry_run` compiles the stage's step
and prints its peak memory per device without running it; `FILE.py:ppo` gives PPO's
batch of 256 prompts.
"""
from jaxrlhf.config import preset_config


def get_config(stage: str = "sft"):
    return preset_config("qwen2_5_0_5b", stage)
