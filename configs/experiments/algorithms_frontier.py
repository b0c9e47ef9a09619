"""Gold reward against KL for every algorithm (Rafailov et al. 2023, Fig. 2), CPU-sized.

One SFT policy; per seed, one set of gold-labelled preference pairs of its samples and one
reward model trained on them (``configs/experiments/stages.py``). From the SFT policy:
PPO, GRPO and RLOO against that reward model at each KL coefficient of
``strengths.<method>``, DPO and IPO on those pairs at each beta, and best-of-n of the SFT
policy selected by that reward model at each n (read from one pool of ``bon.bon.n``
samples per prompt). Each algorithm is its quickstart config (``configs/<method>/``) at
the stage configs' sizes; every policy is evaluated alike on the same held-out prompts
(``sampling.*``: temperature, response length, ``num_eval_prompts``).

    python -m experiments.algorithms_frontier.run [--config=configs/experiments/algorithms_frontier.py:smoke]
"""
import copy
import os

import ml_collections

from jaxrlhf.config import base_config, field_names, load_config_file, override

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.dirname(HERE)


def _get(config: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def rl_variant(ppo_stage: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The PPO stage config turned into ``configs/<name>/quickstart.py``: a copy with every
    field where that file differs from ``configs/ppo/quickstart.py`` set as it sets it."""
    variant = load_config_file(os.path.join(CONFIGS, name, "quickstart.py"))
    ppo = load_config_file(os.path.join(CONFIGS, "ppo", "quickstart.py"))
    out = copy.deepcopy(ppo_stage)
    for field in field_names(variant):
        if _get(variant, field) != _get(ppo, field):
            override(out, field, _get(variant, field))
    return out


def preference_stage(c: ml_collections.ConfigDict, loss: str) -> ml_collections.ConfigDict:
    """``configs/dpo/quickstart.py`` with the reward model's pairs (``reward.*``) and PPO's
    held-out sampling (``sampling.*``), so DPO learns from the data the reward model learns
    from and is evaluated as PPO is."""
    d = load_config_file(os.path.join(CONFIGS, "dpo", "quickstart.py"))
    d.train.tensorboard = False
    d.reward = copy.deepcopy(c.reward.reward)
    d.sampling = copy.deepcopy(c.ppo.sampling)
    d.dpo.loss = loss
    return d


def get_config(size: str = "full"):
    c = load_config_file(os.path.join(HERE, f"stages.py:{size}"))
    c.seeds = (0, 1, 2)
    c.grpo = rl_variant(c.ppo, "grpo")
    c.rloo = rl_variant(c.ppo, "rloo")
    c.dpo = preference_stage(c, "dpo")
    c.ipo = preference_stage(c, "ipo")
    c.bon = base_config()
    c.bon.train.tensorboard = False
    c.bon.ppo = copy.deepcopy(c.ppo.ppo)
    c.bon.sampling = copy.deepcopy(c.ppo.sampling)
    c.bon.bon.update(n=64, num_prompts=c.ppo.sampling.num_eval_prompts, split="eval",
                     batch_size=1024)
    # ppo, grpo, rloo: ppo.kl_coef; dpo, ipo: dpo.beta; bon: n (each a power of 2 <= bon.n).
    c.strengths = ml_collections.ConfigDict(dict(
        ppo=(0.1, 0.3, 1.0, 3.0), grpo=(0.04, 0.2, 1.0, 3.0), rloo=(0.1, 0.3, 1.0, 3.0),
        dpo=(0.1, 0.3, 1.0, 3.0), ipo=(0.03, 0.1, 0.3, 1.0), bon=(2, 4, 8, 16, 32, 64)))
    if size == "smoke":
        c.seeds = (0,)
        for name in ("dpo", "ipo"):
            c[name].train.update(steps=4, batch_size=16, log_every=1, eval_every=2,
                                 checkpoint_every=4, num_samples=1, sample_tokens=8)
        c.bon.bon.update(n=8, batch_size=64)
        c.strengths = ml_collections.ConfigDict(dict(
            ppo=(0.1, 1.0), grpo=(0.1,), rloo=(0.1,), dpo=(0.1, 1.0), ipo=(0.1,),
            bon=(2, 8)))
    return c
