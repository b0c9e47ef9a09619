"""Reward model on Anthropic HH-RLHF harmless-base: 2,000 pairs to train, the rest held out.

A byte-level BPE tokenizer is trained on the training text; CPU-sized.
"""
from jaxrlhf.config import base_config


def get_config():
    c = base_config()
    c.data.source = "hh-rlhf/harmless-base-test.jsonl.gz"
    c.reward.num_train_pairs = 2000
    c.reward.num_eval_pairs = 312
    c.reward.num_reference = 512
    c.reward.max_prompt_tokens = 96
    c.reward.max_response_tokens = 64
    c.data.bpe_vocab_size = 2048
    c.model.update(d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=512,
                   max_seq_len=192)
    c.data.max_len = 161
    c.optim.learning_rate = 3e-4
    c.train.steps = 250
    c.train.eval_every = 125
    c.train.checkpoint_every = 125
    return c
