"""Supervised fine-tuning: maximum likelihood on demonstration responses.

``python -m jaxrlhf sft --config=configs/sft/quickstart.py --workdir=DIR``
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, optim, parallel, sampling
from jaxrlhf.data import sft as sft_data, tasks
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.trainers import common, loop
from jaxrlhf.metrics import read_metrics
from jaxrlhf.trainers.loop import TrainState


def sft_loss_sums(params: nnx.State, batch: loop.Batch, *,
                  graphdef: nnx.GraphDef) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed response-token NLL of one (micro-)batch, and the number of tokens counted.

    Each position predicts the next token: ``logits[:, :-1]`` against ``input_ids[:, 1:]``
    with ``loss_mask[:, 1:]`` (true where the predicted token belongs to the response).
    """
    model = nnx.merge(graphdef, params)
    mask = batch["attention_mask"]                                 # [batch, seq]
    logits, _ = model(batch["input_ids"], sampling.positions_from_mask(mask), mask)
    loss, metrics = losses.sft_nll(logits[:, :-1], batch["input_ids"][:, 1:],
                                   batch["loss_mask"][:, 1:])
    tokens = metrics["tokens"]
    return loss * tokens, {"nll_sum": loss * tokens, "tokens": tokens}


def train_step(state: TrainState, batch: loop.Batch, *, graphdef: nnx.GraphDef,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a batch, accumulated over ``grad_accum`` micro-batches.

    The gradient is that of the batch's mean NLL per response token, whatever the split.
    """
    loss_fn = functools.partial(sft_loss_sums, graphdef=graphdef)
    grads, sums = loop.accumulate_gradients(loss_fn, state.params, batch, grad_accum)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": sums["nll_sum"] / tokens, "grad_norm": optax.global_norm(grads),
               "lr": schedule(state.step), "tokens": sums["tokens"]}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_sums(params: nnx.State, batch: loop.Batch, *, graphdef: nnx.GraphDef):
    """Summed NLL and token count of one evaluation batch (no gradients)."""
    return sft_loss_sums(params, batch, graphdef=graphdef)[1]


def evaluate(params: nnx.State, eval_fn, eval_batches: list[dict[str, np.ndarray]],
             mesh) -> dict[str, float]:
    """Token-weighted mean NLL over the held-out set, and its perplexity."""
    nll, tokens = 0.0, 0.0
    for batch in eval_batches:
        sums = jax.device_get(eval_fn(params, parallel.shard_batch(batch, mesh)))
        nll += float(sums["nll_sum"])
        tokens += float(sums["tokens"])
    loss = nll / max(tokens, 1.0)
    return {"eval/loss": loss, "eval/perplexity": float(np.exp(loss))}


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of an SFT run on one mesh."""
    graphdef: nnx.GraphDef
    init_state: Callable[[], TrainState]
    state_shardings: Any
    step: Callable[[TrainState, loop.Batch], tuple[TrainState, dict[str, jax.Array]]]
    eval_sums: Callable[[nnx.State, loop.Batch], dict[str, jax.Array]]


def build(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh) -> Program:
    """Jit the SFT step (donated state, explicit shardings) and eval for ``mesh``."""
    graphdef, _ = common.abstract_model(CausalLM, model_cfg)
    schedule = optim.warmup_cosine(config.optim, config.train.steps)
    optimizer = optim.adamw(config.optim, schedule)

    def init_state() -> TrainState:
        params = common.initial_lm_params(model_cfg, config)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    state_shardings = common.full_state_shardings(init_state, mesh, config)
    batch_sharding = parallel.batch_sharding(mesh)
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                          schedule=schedule, grad_accum=config.train.grad_accum),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_sums, graphdef=graphdef),
                      in_shardings=(state_shardings.params, batch_sharding))
    return Program(graphdef, init_state, state_shardings, step, eval_fn)


@dataclasses.dataclass
class SFTData:
    """Tokenized SFT data: arrays of ``input_ids``, ``attention_mask``, ``loss_mask``."""
    tokenizer: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    eval_prompts: list[str]
    unigram_entropy: float | None  # of the task's responses, when the task can say


def record_texts(records: list[sft_data.Record]) -> list[str]:
    """The raw text of SFT rows of either layout (for training a tokenizer on them)."""
    texts = []
    for _, row in records:
        if "messages" in row:
            texts.extend(str(m.get("content", "")) for m in row["messages"])
        else:
            texts.append(str(row.get("prompt", "")) + str(row.get("completion", "")))
    return texts


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> SFTData:
    """Examples from the built-in task or a file / ``datasets`` source, tokenized with the
    run's tokenizer (chat rows need it for their template, so it comes first)."""
    d = config.data
    task = None if d.source else tasks.get_task(d.task)
    if task is not None:
        tokenizer = common.run_tokenizer(config, workdir, task=task)
        train = task.demonstrations(d.num_train, seed=config.seed)
        evals = task.demonstrations(d.num_eval, seed=config.seed + 1)
    else:
        records = sft_data.load_records(d.source, d.split)
        eval_records = (sft_data.load_records(d.eval_source, d.eval_split) if d.eval_source
                        else records[-d.num_eval:])
        if not d.eval_source:
            records = records[:-d.num_eval]
        tokenizer = common.run_tokenizer(config, workdir, texts=record_texts(records))
        train = sft_data.sft_examples(records[: d.num_train], tokenizer)
        evals = sft_data.sft_examples(eval_records[: d.num_eval], tokenizer)
    train_arrays = sft_data.tokenize_sft(train, tokenizer, d.max_len)
    print(f"[sft] train data: {train_arrays.stats.report()}")
    return SFTData(
        tokenizer=tokenizer, train=train_arrays,
        eval=sft_data.tokenize_sft(evals, tokenizer, d.max_len),
        eval_prompts=[e["prompt"] for e in evals],
        unigram_entropy=task.unigram_entropy() if task is not None else None)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) SFT; the policy checkpoints and tokenizer land in ``workdir``."""
    mesh = parallel.make_mesh(config.mesh)
    data = prepare_data(config, workdir)
    model_cfg = common.model_config(config, data.tokenizer)
    common.write_model_card(workdir, model_cfg, "params")
    program = build(config, model_cfg, mesh)
    eval_fn = program.eval_sums
    eval_batches = common.fixed_batches(data.eval, config.train.batch_size)
    show_samples = common.sample_printer(program.graphdef, data.tokenizer, data.eval_prompts,
                                         config, workdir)

    def evaluate_state(state: TrainState) -> dict[str, float]:
        show_samples(state.params, int(state.step))
        return evaluate(state.params, eval_fn, eval_batches, mesh)

    batches = BatchIterator(data.train, config.train.batch_size, seed=config.seed)
    state = loop.run(
        workdir=workdir, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state, count_tokens=lambda b: int(b["attention_mask"].sum()),
        desc="sft")
    evals = [row for row in read_metrics(workdir) if "eval/loss" in row]
    summary = {"eval_loss": evals[-1]["eval/loss"], "first_eval_loss": evals[0]["eval/loss"],
               "unigram_entropy": data.unigram_entropy, "step": int(state.step)}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
