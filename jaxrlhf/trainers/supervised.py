"""The supervised train step and its compiled program, shared by every supervised stage
(pretraining, SFT, reward modelling, DPO); and what the causal-LM stages share (the LM
loss and program, held-out NLL, greedy samples).

A stage supplies only its loss: ``loss(graphdef, params, batch) -> (mean loss, {metric:
mean}, count)``. The step accumulates it over micro-batches
(``jaxrlhf.optim.accumulated_gradients``), applies AdamW with the warm-up + cosine schedule,
and logs ``loss``, the loss's metrics, ``grad_norm`` and ``lr``. It is jitted over the mesh
with donated state and explicit shardings (docs/design.md, rule 1).

Under LoRA the train state holds only what trains (``jaxrlhf.models.lora``): the frozen
rest of the parameters is an argument of the compiled step, never in the optimizer state
or the checkpoint, and the loss sees the two joined.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, optim, parallel, sampling
from jaxrlhf.data.tokenizer import decode_rows, encode_prompts
from jaxrlhf.errors import ConfigError
from jaxrlhf.models import lora
from jaxrlhf.models.build import (ParamsInit, abstract_model, born_sharded, given_params_init,
                                  initial_lm_params, lora_init)
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.rl import evaluation
from jaxrlhf.sections import OptimSettings, TrainSettings
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks.base import Task, traceable_gold
from jaxrlhf.trainers.stage import DryRunPrograms, abstract_batch, abstract_trained, step_program
from jaxrlhf.workdir import TrainedModel

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
Loss = Callable[[nnx.GraphDef, nnx.State, Batch], tuple[jax.Array, Metrics, jax.Array]]


@flax.struct.dataclass
class TrainState:
    """What a supervised stage carries from step to step."""
    step: jax.Array        # int32 scalar
    params: Any            # nnx.State of the model's Params
    opt_state: optax.OptState


def train_step(state: TrainState, batch: Batch, frozen: nnx.State | None, *,
               loss_fn: optim.LossFn, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, grad_accum: int,
               count_metric: str | None) -> tuple[TrainState, Metrics]:
    """One optimizer update on a batch, accumulated over ``grad_accum`` micro-batches: the
    gradient is that of the whole batch's mean loss, whatever the split. ``frozen`` is the
    part of the parameters that does not train (None: all train). ``count_metric`` names a
    metric that logs the batch's count (SFT's ``tokens``)."""
    def logged(params, micro):
        loss, metrics, count = loss_fn(lora.join(frozen, params), micro)
        return loss, {**metrics, "loss": loss}, count

    grads, metrics, count = optim.accumulated_gradients(logged, state.params, batch, grad_accum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    if count_metric:
        metrics[count_metric] = count
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def summed_loss(params: nnx.State, batch: Batch, frozen: nnx.State | None, *,
                loss_fn: optim.LossFn) -> tuple[Metrics, jax.Array]:
    """Evaluation sums of one batch: ``{"loss": mean x count, metric: mean x count}`` and
    the count, to be added over batches and divided by the total count."""
    loss, metrics, count = loss_fn(lora.join(frozen, params), batch)
    return {"loss": loss * count, **{k: v * count for k, v in metrics.items()}}, count


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of a supervised stage on one mesh. ``init_state()`` returns the
    placed initial state (parameters from ``init_params``, then the optimizer state made by
    ``start``, a jitted program that takes the parameters as arguments). ``frozen`` is the
    placed frozen part of the parameters (None when every parameter trains)."""
    graphdef: nnx.GraphDef
    init_state: Callable[[], TrainState]
    abstract_state: Any
    state_shardings: Any
    step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval_sums: Callable[[nnx.State, Batch], tuple[Metrics, jax.Array]]
    start: Callable[[nnx.State], TrainState]
    frozen: nnx.State | None = None

    def full_params(self, params: nnx.State) -> nnx.State:
        """The whole parameter state of the model ``graphdef`` from the trained part."""
        return lora.join(self.frozen, params)


def build(*, loss: Loss, model_cls: Callable[..., nnx.Module], model_config: ModelConfig,
          init_params: ParamsInit, optim_settings: OptimSettings,
          train: TrainSettings, mesh: Mesh, rules: Mapping[str, tuple[str, ...]],
          count_metric: str | None = None, frozen: nnx.State | None = None,
          **model_kwargs) -> Program:
    """Jit the step (donated state, explicit shardings) and the evaluation sums for ``mesh``.

    ``init_params(shardings)`` places the starting trainable parameters on the state's
    parameter shardings (random ones are born sharded; imported ones are read onto each
    device); ``frozen`` holds the parameters that do not train (under LoRA), placed here once
    and passed to the compiled step as an argument.
    """
    graphdef, abstract_params = abstract_model(model_cls, model_config, **model_kwargs)
    if frozen is not None:
        abstract_params, _ = lora.split_trainable(abstract_params)
    loss_fn = functools.partial(loss, graphdef)
    schedule = optim.warmup_cosine(optim_settings, train.steps)
    optimizer = optim.adamw(optim_settings, schedule)

    def make_state(params: nnx.State) -> TrainState:
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    abstract_state = jax.eval_shape(make_state, abstract_params)
    state_shardings = parallel.state_shardings(abstract_state, mesh, rules)
    start = jax.jit(make_state, in_shardings=(state_shardings.params,),
                    out_shardings=state_shardings, donate_argnums=0)

    def init_state() -> TrainState:
        return start(init_params(state_shardings.params))

    frozen_shardings = parallel.state_shardings(frozen, mesh, rules)
    frozen = parallel.put(frozen, frozen_shardings)
    batch_sharding = parallel.batch_sharding(mesh)
    step = parallel.MeshJit(
        mesh, functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer,
                                schedule=schedule, grad_accum=train.grad_accum,
                                count_metric=count_metric),
        trailing=(frozen,), in_shardings=(state_shardings, batch_sharding, frozen_shardings),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0)
    eval_sums = parallel.MeshJit(
        mesh, functools.partial(summed_loss, loss_fn=loss_fn), trailing=(frozen,),
        in_shardings=(state_shardings.params, batch_sharding, frozen_shardings))
    return Program(graphdef, init_state, abstract_state, state_shardings, step, eval_sums, start,
                   frozen)


def evaluate_means(params: nnx.State, program: Program, batches: list[dict[str, np.ndarray]],
                   mesh: Mesh) -> dict[str, float]:
    """``eval/NAME``: the count-weighted mean of the loss and of each metric over the fixed
    held-out ``batches`` — the whole set's mean, however it is split into batches."""
    sums, count = {}, 0.0
    for batch in batches:
        out, n = parallel.fetch(program.eval_sums(params, parallel.shard_batch(batch, mesh)))
        sums = {k: sums.get(k, 0.0) + float(v) for k, v in out.items()}
        count += float(n)
    return {f"eval/{k}": v / max(count, 1.0) for k, v in sums.items()}


def policy_evaluation(settings: RunSettings, program: Program, reference: TrainedModel,
                      task: Task, mesh: Mesh) -> Callable[[nnx.State], dict[str, float]]:
    """``trained params -> {eval/gold, eval/gold_stderr, eval/score, eval/kl}`` (and
    ``eval/gold_prob`` for a logit gold, ``eval/accuracy`` and ``eval/pass@k`` for an
    exact-match gold) of a policy-training supervised stage (DPO; SFT from a policy):
    ``sampling.eval_samples_per_prompt`` samples per held-out prompt, drawn as PPO draws them (``sampling.*``), scored by the task's gold reward, with
    its KL from the ``reference`` policy it started from (``jaxrlhf.rl.evaluation``)."""
    g, adapters = settings.sampling, settings.lora.config
    tok = reference.tokenizer
    ev = evaluation.Evaluator.of(reference.graphdef, traceable_gold(task, tok), None, 1.0, 0.0,
                                 tok.eos_token_id, tok.pad_token_id, g)
    _, prompts = evaluation.held_out_prompts(task, tok, g.prompt_length, g.num_eval_prompts,
                                             settings.seed, g.eval_samples_per_prompt)
    batch = parallel.shard_batch(prompts, mesh)

    @jax.jit
    def sample(params, frozen, ref, batch):
        full = lora.join(frozen, params)
        plain = lora.merge(full, adapters.scale) if adapters is not None else full
        return evaluation.evaluate_policy(ev, plain, ref, None, batch, jax.random.key(1234))

    ref = parallel.place(reference.params, mesh, settings.rules)
    return lambda params: evaluation.summarize(parallel.fetch(
        sample(params, program.frozen, ref, batch)), task, g.eval_samples_per_prompt)


def lm_loss(graphdef: nnx.GraphDef, params: nnx.State,
             batch: Batch) -> tuple[jax.Array, dict, jax.Array]:
    """Mean NLL of a batch's counted tokens (``losses.lm_nll``: SFT's response tokens,
    pretraining's every token), no extra metrics, and their count."""
    loss, metrics = losses.lm_nll(graphdef, params, batch)
    return loss, {}, metrics["tokens"]


def lm_program(settings: RunSettings, model_config: ModelConfig, mesh: Mesh,
               policy: TrainedModel | None = None) -> Program:
    """The program of a stage that trains a causal LM on :func:`lm_loss` (SFT,
    pretraining): from ``policy`` (the run in ``policy_init``), ``model_init`` or random
    weights (under LoRA, adapters on them)."""
    if policy is not None:
        init = given_params_init(policy.params)
    else:
        init = initial_lm_params(model_config, model_init=settings.model_init,
                                 seed=settings.seed)
    frozen, lora = None, settings.lora.config
    if lora is not None:
        if policy is None and not settings.model_init:
            raise ConfigError("config.lora.rank > 0 needs a base model to adapt: set "
                              "config.policy_init (a finished run) or config.model_init")
        plain = parallel.state_shardings(abstract_model(CausalLM, model_config)[1], mesh,
                                         settings.rules)
        adapters, frozen = lora_init(CausalLM, model_config, init(plain), lora=lora,
                                     seed=settings.seed, base_dtype=settings.lora.base_dtype)
        init = born_sharded(adapters)
    return build(
        loss=lm_loss, model_cls=CausalLM, model_config=model_config, init_params=init,
        optim_settings=settings.optim, train=settings.train, mesh=mesh, rules=settings.rules,
        count_metric="tokens", frozen=frozen, lora=lora)


def evaluate_lm(params: nnx.State, program: Program,
                eval_batches: list[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, float]:
    """Token-weighted mean NLL over the held-out set, and its perplexity."""
    loss = evaluate_means(params, program, eval_batches, mesh)["eval/loss"]
    return {"eval/loss": loss, "eval/perplexity": float(np.exp(loss))}


def greedy_sampler(graphdef: nnx.GraphDef, tokenizer, prompts: Sequence[str], num_samples: int,
            sample_tokens: int) -> Callable[[Any, int], list[dict[str, str]]]:
    """A callback that greedily completes the first ``num_samples`` ``prompts``, prints them
    and returns them as rows for samples.jsonl."""
    if not prompts or num_samples <= 0:
        return lambda params, step: []
    prompts = list(prompts[:num_samples])
    ids, mask = encode_prompts(tokenizer, prompts)
    generate = jax.jit(lambda params: sampling.generate(
        graphdef, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
        max_new_tokens=sample_tokens, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, greedy=True))

    def sample(params, step: int) -> list[dict[str, str]]:
        completion = generate(params)
        responses = decode_rows(tokenizer, completion.tokens, completion.mask)
        print(f"\n[step {step}] " + " | ".join(f"{p!r} -> {r!r}" for p, r in
                                                zip(prompts, responses)))
        return [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]

    return sample


def lm_dry_run(settings: RunSettings, mesh: Mesh, model_config: ModelConfig) -> DryRunPrograms:
    """The step of :func:`lm_program` over abstract weights (a finished run's shape when
    ``policy_init`` is set) and a batch of ``train.batch_size`` rows of ``data.max_len``."""
    policy = abstract_trained(CausalLM, model_config) if settings.policy_init else None
    program = lm_program(settings, model_config, mesh, policy)
    t, n = settings.train, settings.data.max_len
    return step_program(program, abstract_batch(
        mesh, **{k: ((t.batch_size, n), jnp.int32)
                 for k in ("input_ids", "attention_mask", "loss_mask")}))
