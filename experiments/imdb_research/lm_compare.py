"""Held-out loss per token and bits per byte of IMDb language models on the same text.

The held-out documents are the pretraining config's (``configs/pretrain/imdb.py``: 500
evenly spaced IMDb *test* reviews, ``<br />`` replaced by spaces). Each model reads them
with its own tokenizer, packed with an EOS after each into rows of each length it can
attend over; bits per byte (``jaxrlhf.losses.bits_per_byte``) compare models whatever
their tokenizers. Each model also continues the first :data:`PREFIX_WORDS` words of
:data:`NUM_SAMPLES` of these documents with :data:`SAMPLE_TOKENS` tokens at temperature 1
(no top-k / top-p): samples from the model's own distribution, not its greedy mode.

    python -m experiments.imdb_research.lm_compare --model=NAME=WORKDIR [...] \
        [--rows=96,256] [--out=experiments/imdb_research/lm_compare.json]
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from jaxrlhf import losses, sampling, workdir as workdir_lib
from jaxrlhf.config import load_config_file
from jaxrlhf.data import packing
from jaxrlhf.data.iterator import fixed_batches
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import pretrain

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "..", "..", "configs", "pretrain", "imdb.py")
BATCH = 32
NUM_SAMPLES, PREFIX_WORDS, SAMPLE_TOKENS = 10, 5, 48


def held_out_texts() -> list[str]:
    """The held-out documents of ``configs/pretrain/imdb.py``."""
    return pretrain.documents(RunSettings.from_config(load_config_file(CONFIG)))[1]


def evaluate(workdir: str, texts: list[str], row_length: int) -> dict[str, float]:
    """Mean held-out loss per token, perplexity and bits per byte of the model in
    ``workdir`` on ``texts`` packed into rows of ``row_length``."""
    model = workdir_lib.load_model(workdir, CausalLM)
    tok = model.tokenizer
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    rows = packing.lm_arrays(packing.pack_documents(ids, tok.eos_token_id, row_length), True)
    nll = jax.jit(lambda params, batch: losses.lm_nll(model.graphdef, params, batch))
    total, count = 0.0, 0
    for batch in fixed_batches(rows, BATCH, "the held-out rows"):
        loss, metrics = nll(model.params, batch)
        total += float(loss) * float(metrics["tokens"])
        count += int(metrics["tokens"])
    loss = total / count
    return {"row_length": row_length, "vocab_size": len(tok), "tokens": count,
            "loss_per_token": loss, "perplexity": float(np.exp(loss)),
            "bits_per_byte": losses.bits_per_byte(loss * rows.stats.tokens,
                                                  losses.utf8_bytes(texts))}


def sample_continuations(workdir: str, prompts: list[str]) -> list[dict[str, str]]:
    """The model in ``workdir`` continuing ``prompts`` at temperature 1 (seed 0)."""
    model = workdir_lib.load_model(workdir, CausalLM)
    responses = sampling.complete(model.graphdef, model.params, model.tokenizer, prompts,
                                  max_new_tokens=SAMPLE_TOKENS, temperature=1.0)
    return [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=WORKDIR")
    parser.add_argument("--rows", default="96,256")
    parser.add_argument("--out", default=os.path.join(HERE, "lm_compare.json"))
    args = parser.parse_args()
    texts = held_out_texts()
    step = len(texts) // NUM_SAMPLES
    prompts = [" ".join(texts[i * step].split()[:PREFIX_WORDS]) for i in range(NUM_SAMPLES)]
    results, samples = [], {}
    for spec in args.model:
        name, workdir = spec.split("=", 1)
        max_len = workdir_lib.load_model(workdir, CausalLM).model_config.max_seq_len
        for length in (int(n) for n in args.rows.split(",")):
            if length <= max_len:
                row = {"model": name, **evaluate(workdir, texts, length)}
                print(row)
                results.append(row)
        samples[name] = sample_continuations(workdir, prompts)
    with open(args.out, "w") as f:
        json.dump({"documents": len(texts), "bytes": losses.utf8_bytes(texts),
                   "results": results, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
