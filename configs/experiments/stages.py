"""The three stage configs every experiment and notebook starts from, at full or smoke size.

``get_config()`` (or ``"configs/experiments/stages.py:full"``) is the quickstart pipeline:
``configs/{sft,reward,ppo}/quickstart.py``. ``"...:smoke"`` shrinks every size — model,
data, steps, batches — so that a notebook or an experiment runs end to end in seconds; its
numbers mean nothing. Being a pipeline config, ``jaxrlhf.run("pipeline", config, DIR)``
runs it whole.
"""
import os

import ml_collections

from jaxrlhf.config import load_config_file, override

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ("full", "smoke")

SMOKE = {
    "sft": {"train.steps": 8, "data.num_train": 64, "data.num_eval": 16},
    "reward": {"train.steps": 6, "reward.num_train_pairs": 64, "reward.num_eval_pairs": 32,
               "reward.num_reference": 32},
    "ppo": {"train.steps": 2, "ppo.num_minibatches": 2, "ppo.ppo_epochs": 1,
            "ppo.num_prompts": 64, "sampling.num_eval_prompts": 16,
            "sampling.response_length": 12},
}
SMOKE_COMMON = {"model.d_model": 16, "model.n_heads": 2, "model.n_kv_heads": 2,
                "model.d_ff": 32, "model.n_layers": 1, "train.batch_size": 16,
                "train.log_every": 1, "train.eval_every": 2, "train.checkpoint_every": 4,
                "train.num_samples": 1, "train.sample_tokens": 8}


def get_config(size: str = "full") -> ml_collections.ConfigDict:
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    c = ml_collections.ConfigDict()
    for stage in ("sft", "reward", "ppo"):
        stage_config = load_config_file(os.path.join(CONFIGS, stage, "quickstart.py"))
        stage_config.train.tensorboard = False
        if size == "smoke":
            for name, value in {**SMOKE_COMMON, **SMOKE[stage]}.items():
                override(stage_config, name, value)
        c[stage] = stage_config
    return c
