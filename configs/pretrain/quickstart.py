"""Pretraining a small GPT-2 on Tiny Shakespeare (one document per speaker's turn), or on a
generated corpus when the data directory does not hold it; CPU-sized.

python -m jaxrlhf pretrain --config=configs/pretrain/quickstart.py --workdir=runs/pretrain

The workdir is a policy: ``--config.policy_init=runs/pretrain`` starts SFT (or reward
modelling, DPO, PPO) from it.
"""
from jaxrlhf.config import base_config
from jaxrlhf.data import paths
from jaxrlhf.errors import MissingInputError

TINYSHAKESPEARE = "tinyshakespeare/input.txt"


def _source() -> str:
    """Tiny Shakespeare, named relative to the data dir, if it is there; else "" (the
    generated corpus)."""
    try:
        return TINYSHAKESPEARE if (paths.data_dir() / TINYSHAKESPEARE).exists() else ""
    except MissingInputError:
        return ""


def get_config():
    c = base_config()
    c.data.source = _source()
    c.data.update(num_train=100_000, num_eval=256, max_len=64, bpe_vocab_size=1024)
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, max_seq_len=64)
    c.optim.update(learning_rate=3e-3, warmup_steps=20)
    c.train.update(steps=200, batch_size=32, log_every=10, eval_every=50,
                   checkpoint_every=50, num_samples=2, sample_tokens=24)
    return c
