"""Causal-LM pretraining on raw text: the loss on every token, over packed rows.

``python -m jaxrlhf pretrain --config=configs/pretrain/quickstart.py --workdir=DIR``

Documents (``jaxrlhf.data.corpus.load_texts``: ``.txt`` files, JSONL / JSON / parquet rows
with a ``pretrain.text_field``, or a ``datasets`` name; without ``data.source`` a generated
corpus) are tokenized — by ``data.tokenizer``, the policy's in ``policy_init``, or a
byte-level BPE trained on the training documents — and packed with an EOS after each into
rows of ``data.max_len`` tokens, no padding (``jaxrlhf.data.packing``). With
``pretrain.cross_document=False`` a segment mask keeps every document's attention to
itself. The held-out documents are ``data.num_eval`` evenly spaced ones of
``data.eval_source`` (a file sorted by label, as IMDb's, still gives both), or the last
``data.num_eval`` of the source. The step is the supervised one (``jaxrlhf.trainers.supervised``) with the
LM loss of SFT; each evaluation reports the held-out loss per token, its perplexity and
bits per byte (``jaxrlhf.losses.bits_per_byte``), which compares models whatever their
tokenizers. The workdir is a policy like SFT's: ``policy_init`` of ``sft``, ``reward``,
``dpo`` and ``ppo``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxrlhf import losses, parallel, workdir as workdir_lib
from jaxrlhf.data import corpus, packing
from jaxrlhf.data.imdb import clean_review
from jaxrlhf.data.iterator import BatchIterator, fixed_batches
from jaxrlhf.errors import DataError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models.build import resolve_config
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import loop, supervised
from jaxrlhf.trainers.stage import DryRunPrograms, Stage, number, trained_config
from jaxrlhf.workdir import TrainedModel

PROMPT_WORDS = 3   # the logged samples continue the first words of held-out documents


@dataclasses.dataclass
class Corpus:
    """Packed training and held-out rows (``packing.lm_arrays``), the held-out text's
    UTF-8 bytes, and prompts for the logged samples."""
    tokenizer: Any
    train: packing.PackedRows
    eval: packing.PackedRows
    eval_bytes: int
    prompts: list[str]

    def bits_per_byte(self, loss: float) -> float:
        """Held-out bits per byte of a mean loss per token over the held-out rows."""
        return losses.bits_per_byte(loss * self.eval.stats.tokens, self.eval_bytes)


def documents(settings: RunSettings) -> tuple[list[str], list[str]]:
    """Training and held-out documents: at most ``data.num_train`` and ``data.num_eval``."""
    train, held_out = _documents(settings)
    if settings.pretrain.clean_html_breaks:
        return [clean_review(t) for t in train], [clean_review(t) for t in held_out]
    return train, held_out


def _documents(settings: RunSettings) -> tuple[list[str], list[str]]:
    d, field = settings.data, settings.pretrain.text_field
    if not d.source:
        texts = corpus.generated_corpus(d.num_train + d.num_eval, seed=settings.seed)
        return texts[: d.num_train], texts[d.num_train:]
    texts = corpus.load_texts(d.source, d.split, field)
    if d.eval_source:
        held_out = corpus.load_texts(d.eval_source, d.eval_split, field)
        return texts[: d.num_train], evenly_spaced(held_out, d.num_eval)
    if len(texts) <= d.num_eval:
        raise DataError(f"{d.source}: {len(texts)} documents, too few to hold out "
                        f"config.data.num_eval={d.num_eval} and train on the rest; lower "
                        "data.num_eval or set data.eval_source")
    return texts[:-d.num_eval][: d.num_train], texts[-d.num_eval:]


def evenly_spaced(items: list[str], n: int) -> list[str]:
    """``n`` items (all if fewer) at evenly spaced positions, first and last included."""
    if len(items) <= n:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def pack(texts: list[str], tokenizer, settings: RunSettings, what: str) -> packing.PackedRows:
    """``texts`` tokenized (no special tokens) and packed into LM rows of ``data.max_len``."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    try:
        rows = packing.pack_documents(ids, tokenizer.eos_token_id, settings.data.max_len)
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
    return packing.lm_arrays(rows, settings.pretrain.cross_document)


def prepare_corpus(settings: RunSettings, workdir: str,
                   policy: TrainedModel | None) -> Corpus:
    """The run's documents, tokenizer and packed rows."""
    train_texts, eval_texts = documents(settings)
    d = settings.data
    tokenizer = workdir_lib.run_tokenizer(
        workdir, inherited=policy.tokenizer if policy is not None else None,
        directory=d.tokenizer, texts=train_texts, bpe_vocab_size=d.bpe_vocab_size)
    source = d.source or "the generated corpus"
    train = pack(train_texts, tokenizer, settings, f"{source} (training documents)")
    evals = pack(eval_texts, tokenizer, settings,
                 f"{d.eval_source or source} (held-out documents)")
    print(f"[pretrain] train rows: {train.stats.report()}; eval rows: {evals.stats.report()}")
    prompts = [" ".join(text.split()[:PROMPT_WORDS]) for text in eval_texts if text.split()]
    return Corpus(tokenizer, train, evals, losses.utf8_bytes(eval_texts), prompts)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) pretraining; the policy checkpoints and tokenizer land in
    ``workdir``."""
    settings = RunSettings.from_config(config)
    mesh = parallel.make_mesh(settings.mesh)
    policy = (workdir_lib.load_model(settings.policy_init, CausalLM) if settings.policy_init
              else None)
    data = prepare_corpus(settings, workdir, policy)
    model_config = (policy.model_config if policy is not None else resolve_config(
        settings.model, model_init=settings.model_init, vocab_size=len(data.tokenizer)))
    workdir_lib.write_model_card(workdir, model_config, "params", lora=settings.lora.config,
                                 base=settings.policy_init or settings.model_init,
                                 base_dtype=settings.lora.base_dtype)
    program = supervised.lm_program(settings, model_config, mesh, policy)
    t = settings.train
    eval_batches = fixed_batches(data.eval, t.batch_size, "the held-out rows (config.data."
                                 "num_eval documents packed into rows of data.max_len)")
    sample = supervised.greedy_sampler(program.graphdef, data.tokenizer, data.prompts,
                                       t.num_samples, t.sample_tokens)

    def evaluate_state(state: supervised.TrainState) -> loop.Evaluation:
        metrics = supervised.evaluate_lm(state.params, program, eval_batches, mesh)
        metrics["eval/bits_per_byte"] = data.bits_per_byte(metrics["eval/loss"])
        return metrics, sample(program.full_params(state.params), int(state.step))

    batches = BatchIterator(data.train, t.batch_size, seed=settings.seed)
    state = loop.run(
        workdir=workdir, train=t, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state, count_tokens=lambda b: int((b["attention_mask"] > 0).sum()),
        desc="pretrain", abstract_state=program.abstract_state)
    evals = [row for row in read_metrics(workdir) if "eval/loss" in row]
    rows_per_epoch = len(data.train["input_ids"])
    summary = {"eval_loss": evals[-1]["eval/loss"], "first_eval_loss": evals[0]["eval/loss"],
               "eval_bits_per_byte": evals[-1]["eval/bits_per_byte"],
               "first_eval_bits_per_byte": evals[0]["eval/bits_per_byte"],
               "epochs": int(state.step) * t.batch_size / rows_per_epoch,
               "cross_document": settings.pretrain.cross_document, "step": int(state.step),
               "data_counts": {"train": data.train.stats.report(),
                               "eval": data.eval.stats.report(),
                               "eval_bytes": data.eval_bytes}}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The pretraining step over abstract weights and a batch of packed rows. Without
    ``model.vocab_size`` the vocabulary is the BPE's it would train (``data.bpe_vocab_size``)."""
    if settings.policy_init:
        cfg = trained_config(settings.policy_init)
    else:
        cfg = resolve_config(settings.model, model_init=settings.model_init,
                             vocab_size=settings.model.vocab_size or settings.data.bpe_vocab_size)
    return supervised.lm_dry_run(settings, mesh, cfg)


STAGE = Stage(
    name="pretrain", help="causal-LM pretraining on raw text (packed rows, loss on every "
                          "token, bits per byte)",
    sections=("pretrain",), train=train, produces="policy", reads=(), has_steps=True,
    dry_run=dry_run,
    headline=lambda s: f"pretraining held-out loss {number(s.get('first_eval_loss'))} -> "
                       f"{number(s.get('eval_loss'))} ({number(s.get('eval_bits_per_byte'))}"
                       " bits per byte)")
