"""Direct preference optimisation — DPO, conservative DPO, IPO, SimPO — from the SFT policy.

``python -m jaxrlhf dpo --config=configs/dpo/quickstart.py --workdir=DIR
    --config.policy_init=SFT_WORKDIR``

The pairs are those the reward model learns from (``jaxrlhf.pairs``, ``config.reward.*``):
with no ``data.source``, two samples of the SFT policy per prompt labelled by the task's
gold reward. The reference log-probs — response tokens only — are computed once, before
training, from the frozen SFT policy and travel with the pairs. The loss (``dpo.loss``,
``jaxrlhf.losses.PREFERENCE_LOSSES``) is a supervised stage's loss over the shared step of
``jaxrlhf.trainers.supervised``. Every evaluation reports the held-out pairs' metrics
(TRL's names: ``eval/rewards/accuracies``, ...) and, on the task, the gold reward and KL of
samples of the policy drawn as PPO draws them (``config.sampling.*``) on PPO's held-out
prompts (``jaxrlhf.rl.evaluation``), so DPO lands on PPO's reward–KL plot.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, pairs as pairs_lib, parallel, scoring, workdir as workdir_lib
from jaxrlhf.data.iterator import BatchIterator, fixed_batches
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.build import born_sharded, given_params_init, lora_init
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.rl import evaluation
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import loop, supervised
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, abstract_trained,
                                    number, policy_config, step_program, with_gold)
from jaxrlhf.workdir import TrainedModel

REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")


def pair_log_probs(graphdef: nnx.GraphDef, params: nnx.State,
                   batch: supervised.Batch) -> tuple[jax.Array, ...]:
    """log pi(chosen | x), log pi(rejected | x) and both response lengths, each [pairs],
    from one forward pass over the chosen and rejected rows."""
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    prompt_length = jnp.concatenate([batch["prompt_length"], batch["prompt_length"]], axis=0)
    logps, tokens = scoring.sequence_log_probs(graphdef, params, ids, mask, prompt_length)
    n = batch["chosen_ids"].shape[0]
    return logps[:n], logps[n:], tokens[:n], tokens[n:]


def dpo_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: supervised.Batch, *,
             objective: Callable) -> tuple[jax.Array, dict, jax.Array]:
    """The configured DPO-family loss of a pair batch (with its reference log-probs), its
    metrics, and the number of pairs it averages over."""
    chosen, rejected, n_chosen, n_rejected = pair_log_probs(graphdef, params, batch)
    x = losses.PreferenceLogProbs(chosen, rejected, batch["ref_chosen_logps"],
                                  batch["ref_rejected_logps"], n_chosen, n_rejected)
    loss, metrics = objective(x)
    return loss, metrics, jnp.float32(batch["chosen_ids"].shape[0])


def map_pairs(fn: Callable, arrays: dict[str, np.ndarray], batch_size: int,
              mesh: Mesh) -> list[np.ndarray]:
    """``fn(batch) -> tuple of [pairs] arrays`` over every row of ``arrays`` in batches of
    ``batch_size`` (the last padded by repeating its first row), concatenated."""
    n = len(next(iter(arrays.values())))
    outs = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        rows = np.where(rows < n, rows, start)
        batch = parallel.shard_batch({k: v[rows] for k, v in arrays.items()}, mesh)
        outs.append([np.asarray(x)[: n - start] for x in parallel.fetch(fn(batch))])
    return [np.concatenate(parts) for parts in zip(*outs)]


def with_reference(arrays: dict[str, np.ndarray], graphdef: nnx.GraphDef, params: nnx.State,
                   batch_size: int, mesh: Mesh, needed: bool) -> dict[str, np.ndarray]:
    """The pairs with the frozen reference's log-probs of both responses (zeros when the
    loss is reference-free); ``params`` placed on ``mesh``."""
    n = len(arrays["margin"])
    if not needed:
        return {**arrays, **{k: np.zeros(n, np.float32) for k in REFERENCE_FIELDS}}
    score = jax.jit(functools.partial(pair_log_probs, graphdef))
    chosen, rejected = map_pairs(lambda batch: score(params, batch)[:2], arrays, batch_size,
                                 mesh)
    return {**arrays, REFERENCE_FIELDS[0]: chosen, REFERENCE_FIELDS[1]: rejected}


def build(settings: RunSettings, policy: TrainedModel, mesh: Mesh) -> supervised.Program:
    """The DPO program: the SFT policy (or adapters on it) trained on the configured loss."""
    init, frozen, lora = given_params_init(policy.params), None, settings.lora.config
    if lora is not None:
        adapters, frozen = lora_init(CausalLM, policy.model_config, policy.params, lora=lora,
                                     seed=settings.seed, base_dtype=settings.lora.base_dtype)
        init = born_sharded(adapters)
    return supervised.build(
        loss=functools.partial(dpo_loss, objective=functools.partial(
            losses.PREFERENCE_LOSSES[settings.dpo.loss], s=settings.dpo)),
        model_cls=CausalLM, model_config=policy.model_config, init_params=init,
        optim_settings=settings.optim, train=settings.train, mesh=mesh, rules=settings.rules,
        frozen=frozen, lora=lora)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) DPO from the SFT policy in ``policy_init``."""
    settings = RunSettings.from_config(config)
    if not settings.policy_init:
        raise ConfigError("config.policy_init is empty: pass the workdir of a finished SFT run "
                          "(--config.policy_init=SFT_WORKDIR)")
    mesh = parallel.make_mesh(settings.mesh)
    policy = workdir_lib.load_model(settings.policy_init, CausalLM)
    data = pairs_lib.prepare_pairs(settings, workdir, policy, "dpo")
    workdir_lib.write_model_card(workdir, policy.model_config, "params",
                                 lora=settings.lora.config, base=settings.policy_init,
                                 base_dtype=settings.lora.base_dtype)
    t, reference_free = settings.train, settings.dpo.loss in losses.REFERENCE_FREE_LOSSES
    # The reference is the policy at step 0: under LoRA, the base as the adapters see it.
    start = (policy.params if settings.lora.config is None
             else lora_lib.cast(policy.params, settings.lora.base_dtype))
    reference = parallel.place(start, mesh, settings.rules)
    train_pairs, eval_pairs = (with_reference(arrays, policy.graphdef, reference, t.batch_size,
                                              mesh, not reference_free)
                               for arrays in (data.train, data.eval))
    del reference    # its log-probs are computed; the weights need not stay on the devices
    program = build(settings, policy, mesh)
    eval_batches = fixed_batches(eval_pairs, t.batch_size)
    sample_eval = (supervised.policy_evaluation(settings, program, policy, data.task, mesh)
                   if data.task is not None else lambda params: {})

    def evaluate_state(state: supervised.TrainState) -> dict[str, float]:
        return {**supervised.evaluate_means(state.params, program, eval_batches, mesh),
                **sample_eval(state.params)}

    batches = BatchIterator(train_pairs, t.batch_size, seed=settings.seed)
    state = loop.run(
        workdir=workdir, train=t, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state,
        count_tokens=lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum()),
        desc="dpo", abstract_state=program.abstract_state)
    evals = [row for row in read_metrics(workdir) if "eval/loss" in row]
    summary = {**(evaluation.before_after(evals) if data.task is not None else {}),
               "eval_accuracy": evals[-1]["eval/rewards/accuracies"],
               "eval_loss": evals[-1]["eval/loss"], "loss": settings.dpo.loss,
               "beta": settings.dpo.beta, "data": data.stats, "data_counts": data.counts,
               "step": int(state.step)}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The DPO step over abstract weights and a pair batch (with its reference log-probs)
    of the config's shape."""
    program = build(settings, abstract_trained(CausalLM, policy_config(settings)), mesh)
    b, n = settings.train.batch_size, settings.reward.pair_length
    rows = {k: ((b, n), jnp.int32) for k in ("chosen_ids", "chosen_mask", "rejected_ids",
                                             "rejected_mask")}
    scalars = {k: ((b,), jnp.float32) for k in ("margin", *REFERENCE_FIELDS)}
    return step_program(program, abstract_batch(mesh, **rows, **scalars,
                                                prompt_length=((b,), jnp.int32)))


STAGE = Stage(
    name="dpo", help="direct preference optimisation (DPO, cDPO, IPO, SimPO) from a policy",
    sections=("reward", "dpo", "sampling"), train=train, produces="policy",
    reads=("policy",), has_steps=True, dry_run=dry_run,
    headline=lambda s: with_gold(f"{s.get('loss', 'dpo').upper()} held-out pair accuracy "
                                 f"{number(s.get('eval_accuracy'))}", s))
