"""Bradley–Terry reward modelling on preference pairs.

``python -m jaxrlhf reward --config=configs/reward/quickstart.py --workdir=DIR``

The reward model is the transformer with a scalar head, scoring prompt + response at the
last real token (the EOS). After training, a gain and bias are fitted so that a reference
set of responses (the SFT demonstrations by default) scores mean 0 and std 1
(docs/design.md, PPO detail 9; Ziegler et al. 2019, §2.2); they are saved with the model in
``DIR/reward_normalization.json`` and applied by ``jaxrlhf.workdir.RewardModel`` whenever it
scores. The step, its accumulation and compilation are ``jaxrlhf.trainers.supervised``.
"""
from __future__ import annotations

import dataclasses
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
from jaxrlhf.data import sft as sft_data
from jaxrlhf.data.iterator import BatchIterator, fixed_batches
from jaxrlhf.errors import ConfigError
from jaxrlhf.models import hf, lora as lora_lib
from jaxrlhf.models.build import (ParamsInit, born_sharded, lora_init, random_params,
                                  random_params_init, resolve_config)
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import loop, supervised
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, number,
                                    policy_config, step_program)
from jaxrlhf.workdir import TrainedModel


def pair_scores(graphdef: nnx.GraphDef, params: nnx.State,
                batch: supervised.Batch) -> tuple[jax.Array, jax.Array]:
    """Raw scores of the chosen and rejected rows of a pair batch, in one forward pass."""
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    scores = scoring.last_token_scores(graphdef, params, ids, mask)
    n = batch["chosen_ids"].shape[0]
    return scores[:n], scores[n:]


def reward_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: supervised.Batch, *,
                use_margin: bool, center_coef: float) -> tuple[jax.Array, dict, jax.Array]:
    """Bradley–Terry loss (+ optional margin and centering), its metrics, and the number of
    pairs they average over."""
    r_chosen, r_rejected = pair_scores(graphdef, params, batch)
    loss, metrics = losses.bradley_terry(
        r_chosen, r_rejected, batch["margin"] if use_margin else None)
    if center_coef > 0:
        center, center_metrics = losses.reward_centering(r_chosen, r_rejected, center_coef)
        loss = loss + center
        metrics = {**metrics, **center_metrics}
    return loss, {**metrics, "rm/total_loss": loss}, jnp.float32(batch["chosen_ids"].shape[0])


@dataclasses.dataclass(frozen=True)
class Program:
    """The supervised program plus the reward model's scoring functions on the same mesh,
    each of the trained parameters."""
    supervised: supervised.Program
    pair_scores: Callable     # (params, batch) -> (r_chosen, r_rejected)
    scores: Callable          # (params, ids, mask) -> raw scores


def build(settings: RunSettings, model_config: ModelConfig, mesh: Mesh,
          init_params: ParamsInit, frozen: nnx.State | None = None) -> Program:
    """The reward model's program; under LoRA ``init_params`` gives the adapters and head
    and ``frozen`` the trunk they adapt."""
    r = settings.reward
    program = supervised.build(
        loss=functools.partial(reward_loss, use_margin=r.use_margin, center_coef=r.center_coef),
        model_cls=ScalarModel, model_config=model_config, init_params=init_params,
        optim_settings=settings.optim, train=settings.train, mesh=mesh, rules=settings.rules,
        frozen=frozen, head_init="normal", lora=settings.lora.config)
    params_sharding = program.state_shardings.params
    frozen_sharding = parallel.state_shardings(program.frozen, mesh, settings.rules)
    batch_sharding = parallel.batch_sharding(mesh)
    pair_fn = parallel.MeshJit(
        mesh, lambda params, batch, frozen: pair_scores(
            program.graphdef, lora_lib.join(frozen, params), batch),
        trailing=(program.frozen,),
        in_shardings=(params_sharding, batch_sharding, frozen_sharding))
    score_fn = parallel.MeshJit(
        mesh, lambda params, ids, mask, frozen: scoring.last_token_scores(
            program.graphdef, lora_lib.join(frozen, params), ids, mask),
        trailing=(program.frozen,),
        in_shardings=(params_sharding, batch_sharding, batch_sharding, frozen_sharding))
    return Program(program, pair_fn, score_fn)


def calibration_table(margins: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted P(chosen) = sigmoid(r_c - r_r) in bins vs the observed frequency.

    Each pair counts in both orders, (p, chosen) and (1 - p, rejected), so the table is
    symmetric and the observed frequency is that of "the row's first response was chosen".
    """
    p = 1.0 / (1.0 + np.exp(-margins))
    probs = np.concatenate([p, 1.0 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                          "count": int(sel.sum()), "predicted": float(probs[sel].mean()),
                          "observed": float(outcome[sel].mean())})
    return table


def evaluate_pairs(params, program: Program, batches, mesh,
                   gold_labelled: bool) -> tuple[dict[str, float], np.ndarray]:
    """Held-out accuracy, mean chosen / rejected reward and margin; and all margins.

    With gold-labelled pairs (whose ``margin`` column is ``g_chosen - g_rejected``) it also
    reports ``eval/rm/gold_accuracy``: agreement with the gold ordering, ties left out.
    """
    chosen, rejected = [], []
    for batch in batches:
        r_c, r_r = parallel.fetch(program.pair_scores(params, parallel.shard_batch(batch, mesh)))
        chosen.append(r_c)
        rejected.append(r_r)
    r_c, r_r = np.concatenate(chosen), np.concatenate(rejected)
    margins = r_c - r_r
    metrics = {"eval/rm/accuracy": float((margins > 0).mean()),
               "eval/rm/chosen": float(r_c.mean()), "eval/rm/rejected": float(r_r.mean()),
               "eval/rm/margin": float(margins.mean()),
               "eval/rm/loss": float(np.mean(np.logaddexp(0.0, -margins)))}
    gold = np.concatenate([b["margin"] for b in batches])
    decided = gold != 0
    if gold_labelled and decided.any():
        metrics["eval/rm/gold_accuracy"] = float((margins[decided] * gold[decided] > 0).mean())
    return metrics, margins


def fit_normalization(raw: np.ndarray) -> dict[str, float]:
    """Gain and bias taking ``raw`` to mean 0, std 1."""
    mean, std = float(raw.mean()), float(raw.std())
    gain = 1.0 / max(std, 1e-6)
    return {"gain": gain, "bias": -mean * gain, "reference_mean": mean,
            "reference_std": std, "reference_count": int(raw.size)}


@dataclasses.dataclass
class RewardData:
    tokenizer: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]     # input_ids, attention_mask of reference responses
    stats: dict[str, str]
    counts: dict[str, dict[str, int]]    # the stats as numbers: {"train": ..., "eval": ...}


def prepare_data(settings: RunSettings, workdir: str, policy: TrainedModel | None) -> RewardData:
    """The run's pairs (:func:`jaxrlhf.pairs.prepare_pairs`) and the reference responses
    the score normalisation is fitted on: the task's demonstrations, or the chosen
    responses of file pairs."""
    r = settings.reward
    pairs = pairs_lib.prepare_pairs(settings, workdir, policy, "reward")
    if pairs.task is not None:
        reference = pairs.task.demonstrations(r.num_reference, seed=settings.seed + 2)
    else:
        reference = [{"prompt": p.prompt, "completion": p.chosen}
                     for p in pairs.train_rows[: r.num_reference]]
    reference_arrays = sft_data.tokenize_sft(reference, pairs.tokenizer, r.pair_length)
    return RewardData(pairs.tokenizer, pairs.train, pairs.eval,
                      {k: reference_arrays[k] for k in ("input_ids", "attention_mask")},
                      pairs.stats, pairs.counts)


def initial_params_fn(seed: int, model_config: ModelConfig, policy: TrainedModel | None,
                      model_init: str = "") -> ParamsInit:
    """A scalar model with a random head, its trunk taken from the SFT policy when one is
    given, else imported from the HF directory (or hub id) ``model_init`` when given, else
    random."""
    if policy is None and not model_init:
        return random_params_init(ScalarModel, model_config, seed, head_init="normal")

    def init(shardings: nnx.State) -> nnx.State:
        head = jax.jit(lambda: random_params(ScalarModel, model_config, seed,
                                             head_init="normal")["head"],
                       out_shardings=shardings["head"])()
        if policy is not None:
            trunk = parallel.put(policy.params["model"], shardings["model"])
        else:
            trunk = hf.load_params(model_init, model_config,
                                   nnx.State({"model": shardings["model"]}),
                                   field="config.model_init")["model"]
        return nnx.merge_state(nnx.State({"model": trunk}), nnx.State({"head": head}))
    return init


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) reward-model training, then fit and save the score normalisation."""
    settings = RunSettings.from_config(config)
    mesh = parallel.make_mesh(settings.mesh)
    policy = (workdir_lib.load_model(settings.policy_init, CausalLM) if settings.policy_init
              else None)
    data = prepare_data(settings, workdir, policy)
    model_config = (policy.model_config if policy is not None else resolve_config(
        settings.model, model_init=settings.model_init, vocab_size=len(data.tokenizer)))
    workdir_lib.write_model_card(workdir, model_config, "params", lora=settings.lora.config,
                                 base=settings.policy_init, base_dtype=settings.lora.base_dtype)
    init, frozen = initial_params_fn(settings.seed, model_config, policy,
                                     settings.model_init), None
    if settings.lora.config is not None:
        if policy is None:
            raise ConfigError("config.lora.rank > 0 needs the SFT policy to adapt: set "
                              "config.policy_init")
        adapters, frozen = lora_init(ScalarModel, model_config, policy.params,
                                     lora=settings.lora.config, seed=settings.seed,
                                     base_dtype=settings.lora.base_dtype, head_init="normal")
        init = born_sharded(adapters)
    program = build(settings, model_config, mesh, init, frozen)
    eval_batches = fixed_batches(data.eval, settings.train.batch_size)
    gold_labelled = not settings.data.source

    def evaluate_state(state: supervised.TrainState) -> dict[str, float]:
        return evaluate_pairs(state.params, program, eval_batches, mesh, gold_labelled)[0]

    batches = BatchIterator(data.train, settings.train.batch_size, seed=settings.seed)
    state = loop.run(
        workdir=workdir, train=settings.train, config=config, mesh=mesh,
        init_state=program.supervised.init_state,
        state_shardings=program.supervised.state_shardings, step_fn=program.supervised.step,
        batches=batches, evaluate=evaluate_state,
        count_tokens=lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum()),
        desc="reward", abstract_state=program.supervised.abstract_state)

    metrics, margins = evaluate_pairs(state.params, program, eval_batches, mesh, gold_labelled)
    workdir_lib.write_json(workdir, workdir_lib.CALIBRATION_FILE, calibration_table(margins))
    raw = np.concatenate([
        np.asarray(parallel.fetch(program.scores(state.params, *(
            parallel.shard_batch(b, mesh)[k] for k in ("input_ids", "attention_mask")))))
        for b in fixed_batches(data.reference, settings.train.batch_size,
                               "the reference set (config.reward.num_reference)")])
    normalization = fit_normalization(raw)
    workdir_lib.write_json(workdir, workdir_lib.NORMALIZATION_FILE, normalization)
    summary = {"eval_accuracy": metrics["eval/rm/accuracy"], **metrics,
               "data": data.stats, "normalization": normalization, "step": int(state.step),
               "data_counts": data.counts}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The reward model's step over abstract weights and a pair batch of the config's shape."""
    program = build(settings, policy_config(settings), mesh, init_params=None).supervised
    b, n = settings.train.batch_size, settings.reward.pair_length
    batch = abstract_batch(mesh, chosen_ids=((b, n), jnp.int32), chosen_mask=((b, n), jnp.int32),
                           rejected_ids=((b, n), jnp.int32), rejected_mask=((b, n), jnp.int32),
                           margin=((b,), jnp.float32))
    return step_program(program, batch)


STAGE = Stage(
    name="reward", help="a Bradley-Terry reward model on preference pairs",
    sections=("reward",), train=train, produces="reward_model", reads=("policy",),
    has_steps=True, dry_run=dry_run,
    headline=lambda s: f"reward model held-out accuracy {number(s.get('eval_accuracy'))}")
