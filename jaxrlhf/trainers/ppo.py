"""PPO against a reward model (or the task's gold reward), with a KL penalty to the SFT policy.

``python -m jaxrlhf ppo --config=configs/ppo/quickstart.py --workdir=DIR
    --config.policy_init=SFT_WORKDIR --config.ppo.reward_init=RM_WORKDIR``

One iteration = rollout -> scores -> per-token rewards -> GAE -> ``ppo_epochs`` passes of
shuffled minibatches with gradient accumulation (Ouyang et al. 2022; Ziegler et al. 2019;
the details of Huang et al. 2023/2024, numbered as in PPO_DETAILS.md). By default the whole
iteration is ONE ``jax.jit``-compiled function of ``(state, frozen, prompts)`` with donated
state; ``ppo.single_program=False`` runs the three phases as separately jitted programs
(less peak memory, same numbers).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, parallel, sampling
from jaxrlhf.data import sft as sft_data, tasks
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.rl import advantages as adv_lib, kl as kl_lib, rewards as rewards_lib
from jaxrlhf.trainers import common, loop, reward as reward_trainer


@flax.struct.dataclass
class PPOState:
    step: jax.Array            # int32: iterations done
    policy: Any                # nnx.State
    value: Any                 # nnx.State
    policy_opt: optax.OptState
    value_opt: optax.OptState
    kl: Any                    # KL-controller state (PPO_DETAILS item 8)
    rng: jax.Array             # uint32 key data


@flax.struct.dataclass
class Frozen:
    """What an iteration reads but never changes: the reference policy and reward model."""
    ref: Any                   # nnx.State of the SFT policy
    reward: Any                # nnx.State of the reward model (None with the gold reward)


class Rollout(NamedTuple):
    query: jax.Array           # [batch, prompt_len], left-padded
    query_mask: jax.Array      # [batch, prompt_len]
    response: jax.Array        # [batch, resp_len], pad after the first EOS
    mask: jax.Array            # [batch, resp_len], 1 up to and including the first EOS
    logprobs: jax.Array        # [batch, resp_len] old log-probs (the sampling distribution)
    ref_logprobs: jax.Array    # [batch, resp_len]
    values: jax.Array          # [batch, resp_len] V(s_t) before each response token
    scores: jax.Array          # [batch] sequence scores after the missing-EOS penalty
    gold: jax.Array            # [batch] the task's gold reward (0 when there is none)
    rewards: jax.Array         # [batch, resp_len] shaped per-token rewards
    non_score: jax.Array       # [batch, resp_len] the KL part of the reward
    advantages: jax.Array      # [batch, resp_len]
    returns: jax.Array         # [batch, resp_len]


@dataclasses.dataclass(frozen=True)
class Models:
    policy: nnx.GraphDef
    value: nnx.GraphDef
    reward: nnx.GraphDef | None
    gain: float
    bias: float
    gold: Callable | None     # (query, query_mask, response, mask) -> [batch] gold reward
    eos_id: int
    pad_id: int
    shared_trunk: bool        # the value head reads the policy's trunk (value_init="shared")


def tf_style_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam as TensorFlow computes it: epsilon not scaled by the bias correction.

    TF's update ``lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`` equals PyTorch/optax
    Adam with ``eps_t = eps / sqrt(1 - b2^t)``. lm-human-preferences used it; Huang et al.
    (2023, "N Implementation Details", detail 12) found PyTorch-style Adam gives several
    times larger approx-KL and clip fraction early on (PPO_DETAILS item 16).
    """
    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=jax.tree.map(jnp.zeros_like, params),
                                      nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        t = count.astype(jnp.float32)
        eps_t = eps / jnp.sqrt(1 - b2 ** t)
        out = jax.tree.map(
            lambda m, v: (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps_t), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def ppo_optimizer(config: ml_collections.ConfigDict, total_updates: int):
    """Adam (eps 1e-5, item 16) with the learning rate annealed linearly to 0 (item 17)."""
    p = config.ppo
    schedule = optax.linear_schedule(p.learning_rate, 0.0, max(total_updates, 1))
    o = config.optim
    adam = (tf_style_adam(o.b1, o.b2, p.adam_eps) if p.tf_adam
            else optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=p.adam_eps))
    clip = [optax.clip_by_global_norm(config.optim.grad_clip)] if config.optim.grad_clip > 0 else []
    return optax.chain(*clip, adam, optax.scale_by_learning_rate(schedule)), schedule


def value_params(policy: nnx.State, value: nnx.State, models: Models) -> nnx.State:
    """The value model's parameters: its own, or — with a shared trunk — the policy's trunk
    under the value head, so the value loss also trains the policy trunk."""
    if not models.shared_trunk:
        return value
    return nnx.State({"model": policy["model"], "head": value["head"]})


def response_outputs(graphdef, params, seq, seq_mask, prompt_len: int) -> jax.Array:
    """Model outputs at the positions that predict the response: logits [batch, resp, vocab]
    of a causal LM, or values [batch, resp] of a scalar model (V of the state before each
    response token). seq, seq_mask: [batch, prompt_len + resp]."""
    model = nnx.merge(graphdef, params)
    out, _ = model(seq, sampling.positions_from_mask(seq_mask), seq_mask)
    return out[:, prompt_len - 1:-1]


def response_logprobs(graphdef, params, seq, seq_mask, prompt_len: int,
                      temperature: float) -> tuple[jax.Array, jax.Array]:
    """Log-probs [batch, resp] of the response tokens under ``logits / temperature``, the
    distribution that sampled them (item 3), and the logits."""
    logits = response_outputs(graphdef, params, seq, seq_mask, prompt_len)
    return losses.token_log_probs(logits / temperature, seq[:, prompt_len:]), logits


def rollout_phase(state: PPOState, frozen: Frozen, prompts: loop.Batch, *, models: Models,
                  config: ml_collections.ConfigDict) -> tuple[PPOState, Rollout]:
    """Sample responses, score them and compute per-token rewards, values and advantages.

    The old log-probs are recomputed with one full forward pass rather than taken from the
    sampler (which agrees to ~1e-5): then the first minibatch's ratio is exactly 1 and the
    clip fraction starts at 0, as in TRL and lm-human-preferences.
    """
    p = config.ppo
    rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    query, query_mask = prompts["prompt_ids"], prompts["prompt_mask"]
    completion = sampling.generate(
        models.policy, state.policy, query, query_mask, sample_key,
        max_new_tokens=p.response_length, eos_id=models.eos_id, pad_id=models.pad_id,
        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    response, mask = completion.tokens, completion.mask
    if p.truncate_token_id >= 0:                                        # item 4
        mask = rewards_lib.truncate_after_token(response, mask, p.truncate_token_id,
                                                p.truncate_min_length)
        response = jnp.where(mask == 1, response, models.pad_id)
    seq = jnp.concatenate([query, response], axis=1)
    seq_mask = jnp.concatenate([query_mask, mask], axis=1)
    prompt_len = query.shape[1]
    logprobs, _ = response_logprobs(models.policy, state.policy, seq, seq_mask, prompt_len,
                                    p.temperature)
    ref_logprobs, _ = response_logprobs(models.policy, frozen.ref, seq, seq_mask, prompt_len,
                                        p.temperature)
    values = response_outputs(models.value, value_params(state.policy, state.value, models),
                              seq, seq_mask, prompt_len)
    gold = (models.gold(query, query_mask, response, mask) if models.gold is not None
            else jnp.zeros(query.shape[0]))
    if p.reward_source == "gold":
        scores = gold
    else:
        scores = reward_trainer.score(models.reward, frozen.reward, seq, seq_mask,
                                      models.gain, models.bias)
    has_eos = jnp.any((response == models.eos_id) & (mask == 1), axis=-1)
    if p.penalize_missing_eos:
        scores = rewards_lib.apply_missing_eos_penalty(scores, has_eos, p.missing_eos_penalty)
    beta = state.kl["beta"] if p.kl_in_reward else 0.0
    rewards, non_score = rewards_lib.shaped_rewards(scores, logprobs, ref_logprobs, mask, beta,
                                                    estimator=p.kl_estimator)
    if p.whiten_rewards:
        rewards = adv_lib.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = adv_lib.gae(rewards, values * mask, mask, gamma=p.gamma, lam=p.lam)
    rollout = Rollout(query, query_mask, response, mask, logprobs, ref_logprobs, values,
                      scores, gold, rewards, non_score, advantages, returns)
    return state.replace(rng=jax.random.key_data(rng)), rollout


def ppo_loss_sums(params: dict[str, Any], batch: dict[str, jax.Array], *, models: Models,
                  config: ml_collections.ConfigDict, kl_loss_coef: jax.Array | float):
    """Summed-over-tokens PPO objective of one micro-batch and its metric sums.

    Policy: clipped surrogate (Schulman et al. 2017, eq. 7); value: clipped value loss with
    coefficient ``vf_coef`` (item 12); optional entropy bonus and GRPO-style KL loss
    (Shao et al. 2024, eq. 3) when the KL is not in the reward. Each term is a masked mean
    scaled by the micro-batch's token count, so dividing by the minibatch's count gives the
    exact minibatch mean whatever the accumulation.
    """
    p = config.ppo
    mask = batch["mask"]
    tokens = mask.sum().astype(jnp.float32)
    seq = jnp.concatenate([batch["query"], batch["response"]], axis=1)
    seq_mask = jnp.concatenate([batch["query_mask"], mask], axis=1)
    prompt_len = batch["query"].shape[1]
    logprobs, logits = response_logprobs(
        models.policy, params["policy"], seq, seq_mask, prompt_len, p.temperature)
    values = response_outputs(models.value,
                              value_params(params["policy"], params["value"], models),
                              seq, seq_mask, prompt_len)
    pg, pg_metrics = losses.ppo_policy_loss(logprobs, batch["logprobs"], batch["advantages"],
                                            mask, clip=p.clip)
    vf, vf_metrics = losses.value_loss(values, batch["values"], batch["returns"], mask,
                                       clip=p.value_clip)
    total = pg + p.vf_coef * vf
    metrics = {**pg_metrics, **vf_metrics}
    if p.ent_coef > 0:
        entropy, ent_metrics = losses.entropy_bonus(logits / p.temperature, mask)
        total = total - p.ent_coef * entropy
        metrics.update(ent_metrics)
    if not p.kl_in_reward:
        kl_term, kl_metrics = losses.kl_loss(logprobs, batch["ref_logprobs"], mask,
                                             estimator=p.kl_estimator)
        total = total + kl_loss_coef * kl_term
        metrics.update(kl_metrics)
    metrics["loss/total"] = total
    return total * tokens, {**jax.tree.map(lambda m: m * tokens, metrics), "tokens": tokens}


def update_phase(state: PPOState, rollout: Rollout, ptx: loop.Batch | None, *,
                 models: Models, config: ml_collections.ConfigDict,
                 policy_opt: optax.GradientTransformation,
                 value_opt: optax.GradientTransformation,
                 schedule: optax.Schedule) -> tuple[PPOState, dict[str, jax.Array]]:
    """``ppo_epochs`` passes over the rollout in shuffled minibatches (item 13), advantages
    whitened per minibatch over real tokens (item 11), gradients accumulated over
    ``grad_accum`` micro-batches. Returns the new state and minibatch-mean metrics."""
    p = config.ppo
    batch_size = rollout.query.shape[0]
    mb_size = batch_size // p.num_minibatches
    rng, epoch_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    data = rollout._asdict()
    loss_fn = functools.partial(ppo_loss_sums, models=models, config=config,
                                kl_loss_coef=state.kl["beta"])

    def minibatch_update(carry, indices):
        params, opt_states = carry
        mb = jax.tree.map(lambda x: x[indices], data)
        mb["advantages"] = adv_lib.masked_whiten(mb["advantages"], mb["mask"])
        grads, sums = loop.accumulate_gradients(loss_fn, params, mb, p.grad_accum)
        tokens = jnp.maximum(sums.pop("tokens"), 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        if ptx is not None and p.ptx_coef > 0:                 # InstructGPT eq. 2, ptx term
            grads = _add_ptx_gradient(grads, params, ptx, models, p.ptx_coef)
        pol_updates, pol_opt = policy_opt.update(grads["policy"], opt_states[0], params["policy"])
        val_updates, val_opt = value_opt.update(grads["value"], opt_states[1], params["value"])
        params = {"policy": optax.apply_updates(params["policy"], pol_updates),
                  "value": optax.apply_updates(params["value"], val_updates)}
        return (params, (pol_opt, val_opt)), jax.tree.map(lambda m: m / tokens, sums)

    def epoch(carry, key):
        order = jax.random.permutation(key, batch_size).reshape(p.num_minibatches, mb_size)
        return jax.lax.scan(minibatch_update, carry, order)

    carry = ({"policy": state.policy, "value": state.value}, (state.policy_opt, state.value_opt))
    (params, (pol_opt, val_opt)), metrics = jax.lax.scan(
        epoch, carry, jax.random.split(epoch_key, p.ppo_epochs))
    metrics = jax.tree.map(jnp.mean, metrics)            # over epochs x minibatches
    metrics["lr"] = schedule(updates_applied(pol_opt))
    state = state.replace(policy=params["policy"], value=params["value"], policy_opt=pol_opt,
                          value_opt=val_opt, rng=jax.random.key_data(rng))
    return state, metrics


def updates_applied(opt_state) -> jax.Array:
    """The number of updates an optax chain has applied (its Adam count)."""
    counts = [s.count for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    return counts[0]


def _add_ptx_gradient(grads, params, ptx, models: Models, coef: float):
    """Add ``coef`` x the gradient of the LM loss on a pretraining / demonstration batch to
    the policy gradient: the PPO-ptx objective of Ouyang et al. (2022, eq. 2)."""
    def ptx_loss(policy_params):
        model = nnx.merge(models.policy, policy_params)
        mask = ptx["attention_mask"]
        logits, _ = model(ptx["input_ids"], sampling.positions_from_mask(mask), mask)
        return losses.sft_nll(logits[:, :-1], ptx["input_ids"][:, 1:], ptx["loss_mask"][:, 1:])[0]
    ptx_grads = jax.grad(ptx_loss)(params["policy"])
    return {**grads, "policy": jax.tree.map(lambda g, h: g + coef * h, grads["policy"], ptx_grads)}


def rollout_metrics(rollout: Rollout, state: PPOState, eos_id: int) -> dict[str, jax.Array]:
    """Per-iteration statistics named as in TRL / lm-human-preferences."""
    mask = rollout.mask.astype(jnp.float32)
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(-1)       # [batch], k1
    non_score = rollout.non_score.sum(-1)
    return {
        "objective/kl": kl.mean(),
        "objective/entropy": (-rollout.logprobs * mask).sum(-1).mean(),
        "objective/scores": rollout.scores.mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/rlhf_reward": (rollout.scores + non_score).mean(),
        "objective/gold": rollout.gold.mean(),
        "objective/kl_coef": state.kl["beta"],
        "val/num_eos_tokens": ((rollout.response == eos_id) & (mask > 0)).sum(),
        "val/response_length": mask.sum(-1).mean(),
        "episode": (state.step + 1) * rollout.query.shape[0],
    }


def kl_phase(state: PPOState, rollout: Rollout, config) -> PPOState:
    """Adaptive-KL update once per batch (Ziegler et al. 2019; item 8); fixed keeps beta."""
    p = config.ppo
    if not p.adaptive_kl:
        return state
    mask = rollout.mask.astype(jnp.float32)
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(-1).mean()
    new = kl_lib.update_adaptive_kl(state.kl, kl, rollout.query.shape[0], target=p.kl_target,
                                    horizon=p.kl_horizon)
    return state.replace(kl=new)


def iteration(state: PPOState, frozen: Frozen, batch: loop.Batch, *, models: Models,
              config, policy_opt, value_opt, schedule) -> tuple[PPOState, dict[str, jax.Array]]:
    """One whole PPO iteration as a pure function: rollout, scores, advantages, updates."""
    state, rollout = rollout_phase(state, frozen, batch, models=models, config=config)
    stats = rollout_metrics(rollout, state, models.eos_id)
    ptx = ({k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")}
           if config.ppo.ptx_coef > 0 else None)
    state, metrics = update_phase(state, rollout, ptx, models=models, config=config,
                                  policy_opt=policy_opt, value_opt=value_opt, schedule=schedule)
    state = kl_phase(state, rollout, config)
    return state.replace(step=state.step + 1), {**stats, **metrics}


@dataclasses.dataclass(frozen=True)
class Program:
    models: Models
    init_state: Callable[[], PPOState]
    state_shardings: Any
    frozen: Frozen
    step: Callable[[PPOState, loop.Batch], tuple[PPOState, dict[str, jax.Array]]]
    evaluate: Callable        # (policy params, prompt batch, key) -> per-sample stats


def gold_scorer(task, tokenizer) -> Callable | None:
    """The task's gold reward as a traceable function of token ids.

    Jitted directly when the task computes it from tokens (the built-in ``sentiment``);
    otherwise a ``jax.pure_callback`` that decodes the texts on the host and calls the
    task's text scorer (IMDb's classifier), so the iteration stays one compiled program.
    """
    if task is None:
        return None
    if hasattr(task, "gold_reward_from_tokens"):
        return lambda query, query_mask, response, mask: task.gold_reward_from_tokens(
            response, mask)

    def on_host(query, query_mask, response, mask):
        prompts = common.decode_rows(tokenizer, query, query_mask)
        responses = common.decode_rows(tokenizer, response, mask)
        return np.asarray(task.gold_reward(prompts, responses), np.float32)

    def gold(query, query_mask, response, mask):
        out = jax.ShapeDtypeStruct((query.shape[0],), jnp.float32)
        return jax.pure_callback(on_host, out, query, query_mask, response, mask)
    return gold


def total_updates(config) -> int:
    p = config.ppo
    return config.train.steps * p.ppo_epochs * p.num_minibatches


def build(config, mesh: Mesh, policy: common.Restored, reward: reward_trainer.RewardModel | None,
          task) -> Program:
    """Jit one PPO iteration (single program, or three phases) for ``mesh``."""
    p = config.ppo
    value_source = reward.restored if p.value_init == "reward" else policy
    shared = p.value_init == "shared"
    value_graphdef, _ = common.abstract_model(ScalarModel, value_source.model_cfg,
                                              head_init="zeros")
    models = Models(
        policy=policy.graphdef, value=value_graphdef,
        reward=reward.restored.graphdef if reward is not None else None,
        gain=reward.gain if reward is not None else 1.0,
        bias=reward.bias if reward is not None else 0.0,
        gold=gold_scorer(task, policy.tokenizer),
        eos_id=policy.tokenizer.eos_token_id, pad_id=policy.tokenizer.pad_token_id,
        shared_trunk=shared)
    policy_opt, schedule = ppo_optimizer(config, total_updates(config))
    value_opt, _ = ppo_optimizer(config, total_updates(config))

    def init_state() -> PPOState:
        # Value model: the reward model's (or policy's) trunk, a zero value head (item 15).
        value = common.random_params(ScalarModel, value_source.model_cfg, config.seed,
                                     head_init="zeros")
        if shared:   # only the head is the value model's own
            value = nnx.State({"head": value["head"]})
        else:
            value["model"] = value_source.params["model"]
        return PPOState(step=jnp.zeros((), jnp.int32), policy=policy.params, value=value,
                        policy_opt=policy_opt.init(policy.params),
                        value_opt=value_opt.init(value), kl=kl_lib.init_kl_state(p.kl_coef),
                        rng=jax.random.key_data(jax.random.key(
                            config.seed + jax.process_index() * 100003)))   # item 18

    rules = parallel.rules_table(config.axis_rules)
    state_shardings = common.full_state_shardings(init_state, mesh, config)
    frozen = Frozen(ref=policy.params, reward=reward.restored.params if reward else None)
    frozen_shardings = parallel.state_shardings(frozen, mesh, rules)
    frozen = jax.device_put(frozen, frozen_shardings)
    batch_sharding = parallel.batch_sharding(mesh)
    out = (state_shardings, parallel.replicated(mesh))
    kwargs = dict(models=models, config=config)
    update_kwargs = dict(policy_opt=policy_opt, value_opt=value_opt, schedule=schedule)

    if p.single_program:
        jitted = jax.jit(functools.partial(iteration, **kwargs, **update_kwargs),
                         in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                         out_shardings=out, donate_argnums=0)
        step = lambda state, batch: jitted(state, frozen, batch)
    else:
        step = _phased_iteration(kwargs, update_kwargs, state_shardings, frozen, mesh)

    evaluate = jax.jit(functools.partial(evaluate_policy, models=models, config=config))
    return Program(models, init_state, state_shardings, frozen, step,
                   lambda params, batch, key: evaluate(params, frozen, batch, key))


def _phased_iteration(kwargs, update_kwargs, state_shardings, frozen, mesh):
    """The memory-light fallback: rollout, update and KL phases as separate programs."""
    config = kwargs["config"]
    rollout_jit = jax.jit(functools.partial(rollout_phase, **kwargs), donate_argnums=0)
    update_jit = jax.jit(functools.partial(update_phase, **kwargs, **update_kwargs),
                         out_shardings=(state_shardings, parallel.replicated(mesh)),
                         donate_argnums=0)
    finish_jit = jax.jit(lambda state, rollout: (lambda s: s.replace(step=s.step + 1))(
        kl_phase(state, rollout, config)), donate_argnums=0)
    stats_jit = jax.jit(functools.partial(rollout_metrics, eos_id=kwargs["models"].eos_id))

    def step(state, batch):
        state, rollout = rollout_jit(state, frozen, batch)
        stats = stats_jit(rollout, state)
        ptx = ({k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")}
               if config.ppo.ptx_coef > 0 else None)
        state, metrics = update_jit(state, rollout, ptx)
        return finish_jit(state, rollout), {**stats, **metrics}

    return step


def evaluate_policy(policy_params, frozen: Frozen, batch: loop.Batch, key: jax.Array, *,
                    models: Models, config) -> dict[str, jax.Array]:
    """Sample once per evaluation prompt; per-sample gold, proxy score and KL to the SFT."""
    p = config.ppo
    completion = sampling.generate(
        models.policy, policy_params, batch["prompt_ids"], batch["prompt_mask"], key,
        max_new_tokens=p.response_length, eos_id=models.eos_id, pad_id=models.pad_id,
        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    seq = jnp.concatenate([batch["prompt_ids"], completion.tokens], axis=1)
    seq_mask = jnp.concatenate([batch["prompt_mask"], completion.mask], axis=1)
    prompt_len = batch["prompt_ids"].shape[1]
    logprobs, _ = response_logprobs(models.policy, policy_params, seq, seq_mask, prompt_len,
                                    p.temperature)
    ref_logprobs, _ = response_logprobs(models.policy, frozen.ref, seq, seq_mask, prompt_len,
                                        p.temperature)
    kl = ((logprobs - ref_logprobs) * completion.mask).sum(-1)
    gold = (models.gold(batch["prompt_ids"], batch["prompt_mask"], completion.tokens,
                        completion.mask) if models.gold is not None else jnp.zeros(seq.shape[0]))
    proxy = (reward_trainer.score(models.reward, frozen.reward, seq, seq_mask, models.gain,
                                  models.bias) if models.reward is not None else gold)
    return {"tokens": completion.tokens, "mask": completion.mask, "gold": gold,
            "score": proxy, "kl": kl}


def prompt_arrays(tokenizer, examples: list[dict], config) -> dict[str, np.ndarray]:
    """Left-padded prompts (``prompt_ids``, ``prompt_mask`` [n, prompt_length]) and, when
    the ptx term is on, the demonstrations as LM rows."""
    ids, mask = common.left_pad([tokenizer(e["prompt"])["input_ids"] for e in examples],
                                tokenizer.pad_token_id, config.ppo.prompt_length)
    arrays = {"prompt_ids": ids, "prompt_mask": mask}  # [n, prompt_length]
    if config.ppo.ptx_coef > 0:
        lm = sft_data.tokenize_sft(examples, tokenizer, config.data.max_len)
        arrays.update({k: lm[k] for k in ("input_ids", "attention_mask", "loss_mask")})
    return arrays


def summarize_eval(out: dict[str, np.ndarray], prefix: str = "eval/") -> dict[str, float]:
    gold, n = np.asarray(out["gold"], np.float64), len(out["gold"])
    return {f"{prefix}gold": float(gold.mean()),
            f"{prefix}gold_stderr": float(gold.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            f"{prefix}score": float(np.mean(out["score"])), f"{prefix}kl": float(np.mean(out["kl"]))}


def load_inputs(config):
    """The SFT policy, the reward model (unless the gold reward is the reward) and the task."""
    p = config.ppo
    if not config.policy_init:
        raise ValueError("config.policy_init is empty: pass the workdir of a finished SFT run "
                         "(--config.policy_init=SFT_WORKDIR)")
    policy = common.load_model(config.policy_init, CausalLM)
    reward = None
    if p.reward_source == "model":
        if not p.reward_init:
            raise ValueError("config.ppo.reward_init is empty: pass the workdir of a finished "
                             "reward-model run, or set --config.ppo.reward_source=gold")
        reward = reward_trainer.load_reward_model(p.reward_init)
        if len(reward.restored.tokenizer) != len(policy.tokenizer):
            raise ValueError(f"the reward model in {p.reward_init} uses a different tokenizer "
                             f"({len(reward.restored.tokenizer)} tokens) from the policy in "
                             f"{config.policy_init} ({len(policy.tokenizer)}); train it with "
                             "--config.policy_init=SFT_WORKDIR")
    task = tasks.get_task(config.data.task)
    return policy, reward, task


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) PPO; writes metrics, eval samples and summary.json to ``workdir``."""
    p = config.ppo
    mesh = parallel.make_mesh(config.mesh)
    policy, reward, task = load_inputs(config)
    tok = common.run_tokenizer(config, workdir, inherited=policy.tokenizer)
    common.write_model_card(workdir, policy.model_cfg, "policy")
    program = build(config, mesh, policy, reward, task)
    train_prompts = prompt_arrays(tok, task.demonstrations(p.num_prompts, seed=config.seed),
                                  config)
    eval_prompts = task.prompts(p.num_eval_prompts, seed=config.seed + 1)
    eval_ids, eval_mask = common.left_pad([tok(q)["input_ids"] for q in eval_prompts],
                                          tok.pad_token_id, p.prompt_length)
    eval_batch = parallel.shard_batch({"prompt_ids": eval_ids, "prompt_mask": eval_mask}, mesh)
    samples_path = os.path.join(workdir, "samples.jsonl")

    def evaluate_state(state: PPOState) -> dict[str, float]:
        out = jax.device_get(program.evaluate(state.policy, eval_batch, jax.random.key(1234)))
        responses = common.decode_rows(tok, out["tokens"], out["mask"])
        with open(samples_path, "a") as f:
            for i in range(min(config.train.num_samples, len(responses))):
                f.write(json.dumps({"step": int(state.step), "prompt": eval_prompts[i],
                                    "response": responses[i], "gold": float(out["gold"][i]),
                                    "score": float(out["score"][i])}) + "\n")
        return summarize_eval(out)

    batches = BatchIterator(train_prompts, p.batch_size, seed=config.seed)
    loop.run(workdir=workdir, config=config, mesh=mesh, init_state=program.init_state,
             state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
             evaluate=evaluate_state, count_tokens=lambda b: int(b["prompt_mask"].sum()),
             desc="ppo")
    rows = [r for r in read_metrics(workdir) if "eval/gold" in r]
    train_rows = [r for r in read_metrics(workdir) if "objective/kl" in r]
    summary = {"gold_before": rows[0]["eval/gold"], "gold_before_stderr": rows[0]["eval/gold_stderr"],
               "gold_after": rows[-1]["eval/gold"], "gold_after_stderr": rows[-1]["eval/gold_stderr"],
               "score_before": rows[0]["eval/score"], "score_after": rows[-1]["eval/score"],
               "kl": rows[-1]["eval/kl"],
               "train_kl": train_rows[-1]["objective/kl"] if train_rows else None,
               "iterations": config.train.steps}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
