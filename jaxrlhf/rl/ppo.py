"""PPO for RLHF as pure functions: rollout, update, KL control, and the iteration they form.

One iteration = sample responses -> score them -> per-token rewards -> advantages (GAE on a
learned value, or critic-free: GRPO, RLOO, REINFORCE; ``jaxrlhf.rl.advantages``) ->
``ppo_epochs`` passes of shuffled minibatches with gradient accumulation (Ouyang et al.
2022; Ziegler et al. 2019; the implementation details of Huang et al. 2023/2024, numbered as
the PPO details in docs/design.md). With ``ppo.num_generations`` G > 1 each prompt of the
batch is answered G times, in consecutive rows. Under LoRA the state holds only the
adapters (and the value head); the frozen SFT policy is both their base and the reference,
and sampling uses the merged weights. The iteration is a list of phases
(:func:`iteration_phases`) that :func:`run_phases` applies in order: jitted whole it is one
compiled program; jitted phase by phase it is the memory-light mode with the same numbers.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf import losses, optim, parallel, policy_losses, reward_fns, scoring
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.rl import (advantages as adv_lib, dynamic_sampling, kl as kl_lib,
                        rewards as rewards_lib)
from jaxrlhf.rl.evaluation import Evaluator, evaluate_policy as evaluate_samples
from jaxrlhf.rl.objectives import TermInputs, combine, objective_terms
from jaxrlhf.sections import PPOSettings, SamplingSettings

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
PTX_FIELDS = ("input_ids", "attention_mask", "loss_mask")


@flax.struct.dataclass
class PPOState:
    step: jax.Array            # int32: iterations done
    policy: Any                # nnx.State of what trains (under LoRA: the adapters)
    value: Any                 # nnx.State (only the head with a shared trunk); None when
                               # the advantage estimator is critic-free
    policy_opt: optax.OptState
    value_opt: optax.OptState  # None without a value model
    kl: Any                    # KL-controller state (PPO detail 8)
    rng: jax.Array             # uint32 key data


@flax.struct.dataclass
class Frozen:
    """What an iteration reads but never changes: the reference policy and reward model."""
    ref: Any                   # nnx.State of the SFT policy (under LoRA, the policy's base)
    reward: Any                # nnx.State of the reward model (None with the gold reward)
    value_base: Any = None     # under LoRA, the value model's frozen trunk


class Rollout(NamedTuple):
    query: jax.Array           # [batch, prompt_len], left-padded
    query_mask: jax.Array      # [batch, prompt_len]
    response: jax.Array        # [batch, resp_len], pad after the first EOS
    mask: jax.Array            # [batch, resp_len], 1 up to and including the first EOS
    loss_mask: jax.Array       # [batch, resp_len] the tokens the loss reads: ``mask``, less
                               # responses without an EOS under ``ppo.mask_truncated``
    logprobs: jax.Array        # [batch, resp_len] old log-probs (the sampling distribution)
    sampler_logprobs: jax.Array  # [batch, resp_len] the same, as the sampler computed them
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
    """The static half of the models (graph definitions) and how sequences are scored."""
    policy: nnx.GraphDef      # the trained policy (with adapters under LoRA)
    ref: nnx.GraphDef         # the plain policy: the reference, and sampling
    value: nnx.GraphDef | None
    reward: nnx.GraphDef | None
    gain: float               # reward normalisation (PPO detail 9)
    bias: float
    gold: Callable | None     # (query, query_mask, response, mask) -> [batch] gold reward
    eos_id: int
    pad_id: int
    lora_scale: float | None = None   # alpha / rank under LoRA, None for full training
    reward_fns: reward_fns.ScoresFn | None = None   # ppo.reward_fns' scores [batch, fns]

    def policy_params(self, trainable: nnx.State, frozen: Frozen) -> nnx.State:
        """The policy's whole parameter state (adapters joined to their frozen base)."""
        return lora_lib.join(frozen.ref if self.lora_scale else None, trainable)

    def sampling_params(self, trainable: nnx.State, frozen: Frozen) -> nnx.State:
        """The plain policy's parameters (``ref`` graph): under LoRA, the adapters merged
        into the base, so sampling runs no adapter matmuls."""
        if not self.lora_scale:
            return trainable
        return lora_lib.merge(self.policy_params(trainable, frozen), self.lora_scale)


class Optimizers(NamedTuple):
    policy: optax.GradientTransformation
    value: optax.GradientTransformation
    schedule: optax.Schedule   # the policy learning rate by update count (for logging)


def value_params(policy: nnx.State, value: nnx.State, shared_trunk: bool,
                 value_base: nnx.State | None = None) -> nnx.State:
    """The value model's parameters: its own (joined to its frozen trunk under LoRA), or —
    with a shared trunk — the policy's trunk under the value head, so the value loss also
    trains the policy trunk (PPO detail 15). ``policy`` is the policy's whole state."""
    if not shared_trunk:
        return lora_lib.join(value_base, value)
    return nnx.State({"model": policy["model"], "head": value["head"]})


def sequence_scores(frozen: Frozen, prompts: Batch, query: jax.Array, query_mask: jax.Array,
                    response: jax.Array, mask: jax.Array, *, models: Models,
                    settings: PPOSettings) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each response's score before the penalties: the reward model's (``reward_source``
    "model"), the task's gold ("gold") or 0 ("none"), plus the weighted Python reward
    functions (``jaxrlhf.reward_fns``); with the gold and each function's own scores.
    Returns (scores [batch], gold [batch], function scores [batch, functions])."""
    s = settings
    gold = (models.gold(query, query_mask, response, mask) if models.gold is not None
            else jnp.zeros(query.shape[0]))
    if s.reward_source == "model":
        seq, seq_mask = scoring.join(query, query_mask, response, mask)
        scores = scoring.reward_scores(models.reward, frozen.reward, seq, seq_mask,
                                       models.gain, models.bias)
    else:
        scores = gold if s.reward_source == "gold" else jnp.zeros(query.shape[0])
    function_scores = jnp.zeros((query.shape[0], 0))
    if s.reward_fns:
        index = jnp.repeat(prompts["prompt_index"], s.num_generations, axis=0)   # [batch]
        function_scores = models.reward_fns(index, response, mask)
        scores = scores + reward_fns.weighted_sum(function_scores, s.function_weights)
    return scores, gold, function_scores


def rollout(state: PPOState, frozen: Frozen, prompts: Batch, *, models: Models,
            settings: PPOSettings, sampling: SamplingSettings
            ) -> tuple[PPOState, Rollout, Metrics]:
    """Sample responses, score them and compute per-token rewards, values and advantages;
    with the scoring's own metrics (each reward function's mean, ``dynamic/*``).

    The old log-probs are recomputed with one full forward pass rather than taken from the
    sampler (which agrees to ~1e-6 in fp32): then the first minibatch's ratio is exactly 1
    and the clip fraction starts at 0, as in TRL and lm-human-preferences. The sampler's own
    log-probs are kept, and their gap to the forward's logged (``policy/logprob_gap_*``: a
    ratio that does not start at 1 shows there first); ``ppo.old_logprobs="sampler"`` uses
    them instead and saves that forward.
    Under ``dynamic_sampling`` the prompts are a pool, of which only the groups that
    ``dynamic_sampling.select_groups`` keeps reach the forwards."""
    s, g = settings, sampling
    rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    # [prompts * G, prompt_len]: each prompt answered num_generations times, consecutively
    query = jnp.repeat(prompts["prompt_ids"], s.num_generations, axis=0)
    query_mask = jnp.repeat(prompts["prompt_mask"], s.num_generations, axis=0)
    policy = models.policy_params(state.policy, frozen)
    completion = evaluator(models, g).sample(models.sampling_params(state.policy, frozen),
                                             query, query_mask, sample_key)
    response, mask = completion.tokens, completion.mask
    if g.truncate_token_id >= 0:                                        # PPO detail 4
        mask = rewards_lib.truncate_after_token(response, mask, g.truncate_token_id,
                                                g.truncate_min_length)
        response = jnp.where(mask == 1, response, models.pad_id)
    scores, gold, function_scores = sequence_scores(frozen, prompts, query, query_mask,
                                                    response, mask, models=models, settings=s)
    has_eos = jnp.any((response == models.eos_id) & (mask == 1), axis=-1)
    if g.penalize_missing_eos:                                          # PPO detail 5
        scores = rewards_lib.apply_missing_eos_penalty(scores, has_eos, g.missing_eos_penalty)
    if s.overlong_buffer > 0:                                           # DAPO, eq. 13
        scores = scores + rewards_lib.overlong_penalty(mask.sum(-1), response.shape[1],
                                                       s.overlong_buffer, s.overlong_penalty)
    sampled = (query, query_mask, response, mask, completion.logprobs * mask, scores, gold,
               function_scores, has_eos)
    metrics: Metrics = {}
    if s.dynamic_sampling:                                              # DAPO, eq. 11
        selection = dynamic_sampling.select_groups(
            scores, s.num_generations, prompts["prompt_ids"].shape[0] // s.dynamic_sampling_pool)
        sampled, metrics = tuple(x[selection.rows] for x in sampled), selection.metrics
    (query, query_mask, response, mask, sampler_logprobs, scores, gold, function_scores,
     has_eos) = sampled
    for j, spec in enumerate(s.reward_fns):
        metrics[f"objective/reward_fn/{reward_fns.function_name(spec)}"] = (
            function_scores[:, j].mean())
    seq, seq_mask = scoring.join(query, query_mask, response, mask)
    prompt_len = query.shape[1]
    if s.old_logprobs == "sampler":
        logprobs = sampler_logprobs
    else:   # the largest and mean gap of the sampler's log-probs to the training forward's
        logprobs, _ = scoring.response_log_probs(models.policy, policy, seq, seq_mask,
                                                 prompt_len, g.temperature)
        gap = jnp.abs(sampler_logprobs - logprobs) * mask   # TRL #6789, verl #2953
        metrics.update({"policy/logprob_gap_max": gap.max(), "policy/logprob_gap_mean":
                        gap.sum() / jnp.maximum(mask.sum(), 1.0)})
    ref_logprobs, _ = scoring.response_log_probs(models.ref, frozen.ref, seq, seq_mask,
                                                 prompt_len, g.temperature)
    values = jnp.zeros_like(logprobs)           # critic-free estimators read no value
    if s.uses_value_model:
        values = scoring.response_outputs(
            models.value, value_params(policy, state.value, s.shared_trunk, frozen.value_base),
            seq, seq_mask, prompt_len)
    loss_mask = mask * has_eos[:, None] if s.mask_truncated else mask
    if s.dynamic_sampling:      # the groups kept only to fill the batch carry no loss
        loss_mask = loss_mask * selection.weight[:, None]
    loss_mask = loss_mask.astype(mask.dtype)
    beta = state.kl["beta"] if s.kl_in_reward else 0.0
    rewards, non_score = rewards_lib.shaped_rewards(scores, logprobs, ref_logprobs, mask, beta,
                                                    estimator=s.kl_estimator)
    if s.whiten_rewards:                                                # PPO detail 9
        rewards = adv_lib.masked_whiten(rewards, mask, shift_mean=False)
    options = adv_lib.AdvantageOptions(s.gamma, s.lam, s.num_generations, s.scale_rewards)
    advantages, returns = adv_lib.ESTIMATORS[s.advantage].advantages(rewards, values, mask,
                                                                      options)
    out = Rollout(query, query_mask, response, mask, loss_mask, logprobs, sampler_logprobs,
                  ref_logprobs, values, scores, gold, rewards, non_score, advantages, returns)
    return state.replace(rng=jax.random.key_data(rng)), out, metrics


def rollout_metrics(r: Rollout, state: PPOState, eos_id: int) -> Metrics:
    """Per-iteration statistics named as in TRL / lm-human-preferences."""
    mask = r.mask.astype(jnp.float32)
    non_score = r.non_score.sum(-1)
    return {
        "objective/kl": scoring.sequence_kl(r.logprobs, r.ref_logprobs, mask).mean(),
        "objective/entropy": (-r.logprobs * mask).sum(-1).mean(),
        "objective/scores": r.scores.mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/rlhf_reward": (r.scores + non_score).mean(),
        "objective/gold": r.gold.mean(),
        "objective/kl_coef": state.kl["beta"],
        "val/num_eos_tokens": ((r.response == eos_id) & (mask > 0)).sum(),
        "val/response_length": mask.sum(-1).mean(),
        "episode": (state.step + 1) * r.query.shape[0],
    }


def ppo_loss(params: dict[str, Any], batch: Batch, *, models: Models, settings: PPOSettings,
             temperature: float, kl_coef: jax.Array,
             frozen: Frozen) -> tuple[jax.Array, Metrics, jax.Array]:
    """The PPO objective of one micro-batch (:mod:`jaxrlhf.rl.objectives`): its value, its
    terms' metrics (means over real response tokens under the weights of ``ppo.loss_agg``)
    and the sum of those weights, by which the accumulator weights the micro-batch."""
    s, mask = settings, batch["mask"]
    seq, seq_mask = scoring.join(batch["query"], batch["query_mask"], batch["response"], mask)
    prompt_len = batch["query"].shape[1]
    policy = models.policy_params(params["policy"], frozen)
    logprobs, entropies = scoring.response_log_probs(
        models.policy, policy, seq, seq_mask, prompt_len, temperature,
        with_entropy=s.ent_coef > 0)
    values = None
    if s.uses_value_model:
        values = scoring.response_outputs(
            models.value, value_params(policy, params["value"], s.shared_trunk,
                                       frozen.value_base), seq, seq_mask, prompt_len)
    weights = policy_losses.aggregation_weights(batch["loss_mask"], s.loss_agg)   # [batch, resp]
    inputs = TermInputs(logprobs, entropies, values, batch, weights)
    total, metrics = combine(objective_terms(s, kl_coef), inputs, s)
    return total, metrics, weights.sum()


def add_ptx_gradient(grads: dict[str, Any], policy: nnx.State, ptx: Batch, models: Models,
                     frozen: Frozen, coef: float) -> dict[str, Any]:
    """Add ``coef`` x the gradient of the LM loss on demonstration rows to the policy
    gradient: the PPO-ptx objective of Ouyang et al. (2022, eq. 2)."""
    ptx_grads = jax.grad(lambda p: losses.lm_nll(
        models.policy, models.policy_params(p, frozen), ptx)[0])(policy)
    return {**grads, "policy": jax.tree.map(lambda g, h: g + coef * h, grads["policy"], ptx_grads)}


def aggregate(grads: dict[str, Any], metrics: Metrics, mask: jax.Array,
              loss_agg: str) -> tuple[dict[str, Any], Metrics]:
    """The gradient and ``loss/*`` metrics of the whole minibatch's ``loss_agg`` aggregate
    (``policy_losses.aggregation_scale`` over its ``mask`` [batch, resp]) from the accumulated
    weighted means."""
    scale = policy_losses.aggregation_scale(mask, loss_agg)
    return (jax.tree.map(lambda g: g * scale, grads),
            {k: v * scale if k.startswith("loss/") else v for k, v in metrics.items()})


def update(state: PPOState, frozen: Frozen, r: Rollout, ptx: Batch | None, *, models: Models,
           settings: PPOSettings, temperature: float,
           optimizers: Optimizers) -> tuple[PPOState, Metrics]:
    """``ppo_epochs`` passes over the rollout in shuffled minibatches (PPO detail 13),
    advantages whitened per minibatch over real tokens (detail 11, ``whiten_advantages``)
    when the estimator asks for it, gradients accumulated over ``grad_accum`` micro-batches.
    Returns the new state and minibatch-mean metrics."""
    s = settings
    batch_size = r.query.shape[0]
    rng, epoch_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    data = r._asdict()
    loss_fn = functools.partial(ppo_loss, models=models, settings=s, temperature=temperature,
                                kl_coef=state.kl["beta"], frozen=frozen)
    whiten = s.whiten_advantages and adv_lib.ESTIMATORS[s.advantage].whiten

    def step(optimizer, grads, opt_state, params):
        if params is None:                        # no value model: nothing to update
            return None, None
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def minibatch_update(carry, indices):
        params, (pol_opt, val_opt) = carry
        # rows gathered by a permutation, kept split over the batch axes (not replicated)
        mb = jax.tree.map(lambda x: parallel.constrain_batch(x[indices]), data)
        if whiten:                                                     # PPO detail 11
            mb["advantages"] = adv_lib.masked_whiten(mb["advantages"], mb["loss_mask"])
        grads, metrics, _ = optim.accumulated_gradients(loss_fn, params, mb, s.grad_accum)
        grads, metrics = aggregate(grads, metrics, mb["loss_mask"], s.loss_agg)
        if ptx is not None:
            grads = add_ptx_gradient(grads, params["policy"], ptx, models, frozen, s.ptx_coef)
        policy, pol_opt = step(optimizers.policy, grads["policy"], pol_opt, params["policy"])
        value, val_opt = step(optimizers.value, grads["value"], val_opt, params["value"])
        return ({"policy": policy, "value": value}, (pol_opt, val_opt)), metrics

    def epoch(carry, key):
        order = jax.random.permutation(key, batch_size).reshape(s.num_minibatches, -1)
        return jax.lax.scan(minibatch_update, carry, order)

    carry = ({"policy": state.policy, "value": state.value}, (state.policy_opt, state.value_opt))
    (params, (pol_opt, val_opt)), metrics = jax.lax.scan(
        epoch, carry, jax.random.split(epoch_key, s.ppo_epochs))
    metrics = jax.tree.map(jnp.mean, metrics)            # over epochs x minibatches
    metrics["lr"] = optimizers.schedule(optim.updates_applied(pol_opt))
    state = state.replace(policy=params["policy"], value=params["value"], policy_opt=pol_opt,
                          value_opt=val_opt, rng=jax.random.key_data(rng))
    return state, metrics


def adapt_kl(state: PPOState, r: Rollout, settings: PPOSettings) -> PPOState:
    """Adaptive-KL update once per batch (Ziegler et al. 2019; PPO detail 8); a fixed
    controller keeps beta."""
    if not settings.adaptive_kl:
        return state
    kl = scoring.sequence_kl(r.logprobs, r.ref_logprobs, r.mask.astype(jnp.float32)).mean()
    new = kl_lib.update_adaptive_kl(state.kl, kl, r.query.shape[0], target=settings.kl_target,
                                    horizon=settings.kl_horizon)
    return state.replace(kl=new)


# (state, frozen, batch, carry) -> (state, carry): one step of an iteration.
Phase = Callable[[PPOState, Frozen, Batch, dict], tuple[PPOState, dict]]


def iteration_phases(*, models: Models, settings: PPOSettings, sampling: SamplingSettings,
                     optimizers: Optimizers) -> tuple[Phase, ...]:
    """The phases of one iteration, in order: sample and score (rollout and its statistics),
    optimise (the PPO epochs), then adapt the KL coefficient and count the iteration."""
    def sample_and_score(state, frozen, batch, carry):
        del carry
        state, r, metrics = rollout(state, frozen, batch, models=models, settings=settings,
                                    sampling=sampling)
        return state, {"rollout": r, "metrics": {**rollout_metrics(r, state, models.eos_id),
                                                 **metrics}}

    def optimise(state, frozen, batch, carry):
        ptx = {k: batch[k] for k in PTX_FIELDS} if settings.ptx_coef > 0 else None
        state, metrics = update(state, frozen, carry["rollout"], ptx, models=models,
                                settings=settings, temperature=sampling.temperature,
                                optimizers=optimizers)
        return state, {**carry, "metrics": {**carry["metrics"], **metrics}}

    def adapt(state, frozen, batch, carry):
        del frozen, batch
        state = adapt_kl(state, carry["rollout"], settings)
        return state.replace(step=state.step + 1), carry

    return sample_and_score, optimise, adapt


def run_phases(phases: Sequence[Phase], state: PPOState, frozen: Frozen,
               batch: Batch) -> tuple[PPOState, Metrics]:
    """Apply the phases in order; the iteration's new state and metrics."""
    carry: dict = {}
    for phase in phases:
        state, carry = phase(state, frozen, batch, carry)
    return state, carry["metrics"]


def evaluator(models: Models, sampling: SamplingSettings) -> Evaluator:
    """How the policy samples (in the rollout and in evaluation) and what scores it."""
    return Evaluator.of(models.ref, models.gold, models.reward, models.gain, models.bias,
                        models.eos_id, models.pad_id, sampling)


def evaluate_policy(trainable: nnx.State, frozen: Frozen, batch: Batch, key: jax.Array, *,
                    models: Models, sampling: SamplingSettings) -> dict[str, jax.Array]:
    """Sample once per evaluation prompt; per-sample gold, proxy score and KL to the SFT
    (``jaxrlhf.rl.evaluation``)."""
    return evaluate_samples(evaluator(models, sampling),
                            models.sampling_params(trainable, frozen), frozen.ref,
                            frozen.reward, batch, key)
