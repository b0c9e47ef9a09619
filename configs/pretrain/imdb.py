"""Pretraining the IMDb language model of the research testbed: a GPT-2
on the text of the 25,000 IMDb training reviews (Maas et al. 2011), with a byte-level BPE
trained on them; the 25,000 test reviews' text is held out.

python -m jaxrlhf pretrain --config=configs/pretrain/imdb.py --workdir=runs/imdb_research/pretrain

Each review is one document (``<br />`` line breaks replaced by spaces), packed with an
EOS after each into rows of 256 tokens: 8.10M training tokens, 31,641 rows. The shape is
the largest whose epoch fits about an hour on 2 CPU cores, measured at 32 rows x 256 tokens
per step (``experiments/imdb_research/README.md``): 4 x 256 ran 2,560 tokens/s (53 min per
epoch), 6 x 256 1,660 (81 min). 1,000 steps = 1.01 epochs. The workdir is a policy:
``configs/pipeline/imdb_research.py`` (its ``pretrain`` stage is this workdir when run
with ``--workdir=runs/imdb_research``) starts every IMDb experiment from it.
"""
from jaxrlhf.config import base_config

MODEL = dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=8, d_ff=1024, max_seq_len=256)


def get_config():
    c = base_config()
    c.data.update(source="imdb/train.jsonl.gz", eval_source="imdb/test.jsonl.gz",
                  num_train=25_000, num_eval=500, max_len=256, bpe_vocab_size=8192)
    c.pretrain.clean_html_breaks = True
    c.model.update(MODEL)
    c.optim.update(learning_rate=1e-3, warmup_steps=100, end_lr_ratio=0.1,
                   weight_decay=0.1)
    c.train.update(steps=1000, batch_size=32, log_every=25,
                   eval_every=250, checkpoint_every=100, num_samples=10, sample_tokens=48)
    return c
