"""IMDb controlled sentiment: SFT on review text, a reward model on policy samples labelled
by the gold sentiment classifier, then PPO to continue review prefixes positively.

The small-scale form of Ziegler et al. (2019) and of the DPO paper's Figure 2, CPU-sized
(a 4-layer, 128-wide GPT-2 and a 4,096-token BPE tokenizer trained on the reviews).
"""
import os

import ml_collections

from jaxrlhf.config import load_config_file

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512, max_seq_len=96)


def get_config():
    c = ml_collections.ConfigDict()
    for stage in ("sft", "reward", "ppo"):
        c[stage] = load_config_file(os.path.join(CONFIGS, stage, "quickstart.py"))
        c[stage].model.update(MODEL)
        c[stage].data.update(task="imdb_sentiment", max_len=64)

    c.sft.data.update(num_train=20000, num_eval=512)
    c.sft.train.update(steps=1500, eval_every=500, checkpoint_every=500, sample_tokens=32)

    c.reward.reward.update(num_train_pairs=2048, num_eval_pairs=512, max_prompt_tokens=16,
                           max_response_tokens=32, label_temperature=0.1)
    c.reward.train.update(steps=300, eval_every=100, checkpoint_every=100)

    c.ppo.sampling.update(prompt_length=16, response_length=32)
    c.ppo.optim.learning_rate = 1e-4
    c.ppo.ppo.num_prompts = 8192
    c.ppo.train.update(steps=60, eval_every=10, checkpoint_every=10)
    return c
