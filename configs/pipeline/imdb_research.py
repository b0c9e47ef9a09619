"""The IMDb research testbed (Rafailov et al. 2023, §6.1), CPU-sized: pretrain -> SFT ->
pairs + reward model -> PPO against the reward model, PPO against the gold reward, DPO and
best-of-16, all from one SFT policy and one set of pairs.

python -m jaxrlhf pipeline --config=configs/pipeline/imdb_research.py --workdir=runs/imdb_research

- ``pretrain``: a 4 x 256 GPT-2 on the IMDb training reviews (``configs/pretrain/imdb.py``).
- ``sft``: that LM fine-tuned on review continuations — prefixes of 2-8 tokens of training
  reviews, the next 48 tokens (``jaxrlhf.tasks.imdb``).
- ``reward``: the paper's pair recipe — 4 SFT samples per prefix, all 6 pairs, labelled
  deterministically by the gold logit (exact ties dropped) — and a reward model started
  from the SFT policy, keeping the checkpoint of lowest held-out loss
  (``train.best_metric``).
- ``ppo`` (reward model), ``ppo_gold`` (the gold reward: the upper reference), ``dpo``
  (beta 0.1, on the same pairs: its ``reward`` section is the reward stage's) and ``bon``
  (best-of-16 by the reward model) each start from the SFT policy (``policy_init="@sft"``).

Every stage is evaluated on prefixes of the *test* reviews: gold logit and P(positive)
before -> after (± s.e.) and the KL from the SFT policy. Re-running the command resumes.

``imdb_research.py:smoke``: the same stages at toy size (a 1 x 32 model, a few steps
each), for the test suite on ``tests/fixtures`` reviews.
"""
import os

import ml_collections

from jaxrlhf.config import load_config_file

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = dict(task="imdb_sentiment", max_len=64)          # prefix <= 8 + 48 response tokens
SAMPLING = dict(prompt_length=8, response_length=48, num_eval_prompts=512,
                temperature=1.0)
PAIRS = dict(samples_per_prompt=4, pairs_per_prompt=0, label_mode="max",
             num_train_pairs=12288, num_eval_pairs=1536, num_reference=512,
             max_prompt_tokens=8, max_response_tokens=48, sample_temperature=1.0)


def _stage(kind: str) -> ml_collections.ConfigDict:
    c = load_config_file(os.path.join(CONFIGS, kind, "quickstart.py"))
    c.data.update(TASK)
    c.sampling.update(SAMPLING)
    c.reward.update(PAIRS)
    return c


SIZES = ("full", "smoke")
SMOKE_MODEL = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=64)


def get_config(size: str = "full"):
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    c = _full()
    if size == "smoke":
        _shrink(c)
    return c


def _shrink(c: ml_collections.ConfigDict) -> None:
    """Toy sizes: every stage runs in seconds on a handful of reviews."""
    c.pretrain.model.update(SMOKE_MODEL)
    c.pretrain.data.update(max_len=16, bpe_vocab_size=300, num_eval=8)
    for name, _ in c.stages:
        c[name].train.update(steps=4, batch_size=8, log_every=2, eval_every=2,
                             checkpoint_every=2, num_samples=1, sample_tokens=4)
        if name != "pretrain":
            c[name].sampling.update(num_eval_prompts=8, response_length=8)
            c[name].reward.update(num_train_pairs=96, num_eval_pairs=48, num_reference=8,
                                  max_response_tokens=8)
    c.sft.data.update(num_train=64, num_eval=8)
    for name in ("ppo", "ppo_gold"):
        c[name].train.update(steps=2, batch_size=8, eval_every=1, checkpoint_every=1)
        c[name].ppo.update(num_prompts=16, num_minibatches=2, ppo_epochs=1)
    c.bon.bon.update(n=4, num_prompts=8, batch_size=8)


def _full() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.pretrain = load_config_file(os.path.join(CONFIGS, "pretrain", "imdb.py"))

    c.sft = _stage("sft")
    c.sft.data.update(num_train=16384, num_eval=512)
    c.sft.optim.update(learning_rate=3e-4, warmup_steps=20)
    c.sft.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100,
                       sample_tokens=48)

    c.reward = _stage("reward")
    c.reward.optim.update(learning_rate=1e-4, warmup_steps=20, weight_decay=0.1)
    c.reward.train.update(steps=384, batch_size=32, eval_every=48, checkpoint_every=48,
                          best_metric="eval/rm/loss", best_mode="min")

    c.ppo = _stage("ppo")
    c.ppo.policy_init = "@sft"
    c.ppo.ppo.num_prompts = 8192
    c.ppo.optim.learning_rate = 1e-4
    c.ppo.train.update(steps=60, batch_size=64, eval_every=10, checkpoint_every=10)

    c.ppo_gold = _stage("ppo")
    c.ppo_gold.update(policy_init="@sft")
    c.ppo_gold.ppo.update(num_prompts=8192, reward_source="gold", value_init="policy")
    c.ppo_gold.optim.learning_rate = 1e-4
    c.ppo_gold.train.update(steps=60, batch_size=64, eval_every=10, checkpoint_every=10)

    c.dpo = _stage("dpo")
    c.dpo.policy_init = "@sft"
    c.dpo.dpo.beta = 0.1
    c.dpo.optim.update(learning_rate=1e-4, warmup_steps=20)
    c.dpo.train.update(steps=384, batch_size=32, eval_every=64, checkpoint_every=64)

    c.bon = _stage("bon")
    c.bon.policy_init = "@sft"
    c.bon.bon.update(n=16, num_prompts=512)

    c.stages = (("pretrain", "pretrain"), ("sft", "sft"), ("reward", "reward"),
                ("ppo", "ppo"), ("ppo_gold", "ppo"), ("dpo", "dpo"), ("bon", "bon"))
    return c
