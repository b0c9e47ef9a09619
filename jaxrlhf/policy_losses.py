"""PPO-family loss terms, each ``(loss, metrics)`` over [B, T] response tokens: the policy
losses selected by ``ppo.policy_loss`` (:data:`POLICY_LOSSES`), the aggregations selected by
``ppo.loss_agg`` (:data:`LOSS_AGGREGATIONS`), the clipped value loss and the entropy bonus.
``jaxrlhf.rl.objectives`` combines them into one objective (docs/design.md, "Advantages and
losses").
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrlhf.losses import Metrics, masked_mean


def ppo_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                    mask: jax.Array, clip: float = 0.2,
                    clip_high: float | None = None) -> tuple[jax.Array, Metrics]:
    """PPO clipped surrogate, negated for minimisation (Schulman et al. 2017, eq. 7).

    ``L = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)))`` with
    ``ratio = exp(logp - old_logp)``, ``eps_low = clip`` and ``eps_high = clip_high``
    (default: ``clip``; a larger one is DAPO's clip-higher, Yu et al. 2025, eq. 10).
    Huang et al. 2023 ("N implementation details of RLHF").

    logp, old_logp, advantages, mask: [B, T] (``mask`` may carry the weights of a loss
    aggregation, :func:`aggregation_weights`). Metrics:
      loss/policy; policy/approxkl = 0.5 * masked_mean((logp - old_logp)^2) (the k2 estimator
      of KL(old || new), as TRL/OpenAI log it); policy/clipfrac = fraction of real tokens where
      the clipped term is active; val/ratio = masked mean ratio.
    """
    log_ratio = logp - jax.lax.stop_gradient(old_logp)  # [B, T]
    return _clipped_surrogate(log_ratio, log_ratio, advantages, mask, clip,
                              clip if clip_high is None else clip_high)


def _clipped_surrogate(log_ratio: jax.Array, token_log_ratio: jax.Array, advantages: jax.Array,
                       mask: jax.Array, clip_low: float,
                       clip_high: float) -> tuple[jax.Array, Metrics]:
    """``masked_mean(max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)))`` for ``r =
    exp(log_ratio)`` [B, T] and its metrics (``token_log_ratio``: the per-token log ratio the
    approximate KL is logged from)."""
    advantages = jax.lax.stop_gradient(advantages)
    ratio = jnp.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = masked_mean(jnp.maximum(pg1, pg2), mask)
    metrics = {
        "loss/policy": loss,
        "policy/approxkl": 0.5 * masked_mean(jax.lax.stop_gradient(token_log_ratio) ** 2, mask),
        "policy/clipfrac": masked_mean((pg2 > pg1).astype(jnp.float32), mask),
        "val/ratio": masked_mean(jax.lax.stop_gradient(ratio), mask),
    }
    return loss, metrics


def gspo_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                     mask: jax.Array, clip_low: float, clip_high: float,
                     token_level: bool = False) -> tuple[jax.Array, Metrics]:
    """Group Sequence Policy Optimization (Zheng et al. 2025, eqs. 5-7), negated.

    The importance ratio is the sequence's, length-normalised: ``s_i = exp(mean_t(logp -
    old_logp))`` over its real tokens, clipped per sequence, times the sequence's advantage
    ``A_i`` (the mean of its tokens' advantages: the advantage itself for GRPO / RLOO).
    ``token_level`` is GSPO-token (eq. 13): ``s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]``
    with per-token advantages, whose value equals GSPO's and whose gradient lets each token
    carry its own advantage. The per-sequence loss is spread over the sequence's tokens, so
    ``seq_mean_token_mean`` aggregation (:func:`aggregation_weights`) gives the paper's
    ``1/G sum_i``. logp, old_logp, advantages, mask: [B, T]; metrics as
    :func:`ppo_policy_loss`'s.
    """
    real = (mask > 0).astype(logp.dtype)
    log_ratio = logp - jax.lax.stop_gradient(old_logp)                           # [B, T]
    seq_log_ratio = (log_ratio * real).sum(-1, keepdims=True) / jnp.maximum(
        real.sum(-1, keepdims=True), 1.0)                                         # [B, 1]
    if token_level:
        used = jax.lax.stop_gradient(seq_log_ratio) + log_ratio - jax.lax.stop_gradient(log_ratio)
        seq_advantages = advantages
    else:
        used = jnp.broadcast_to(seq_log_ratio, log_ratio.shape)
        seq_advantages = jnp.broadcast_to(
            (advantages * real).sum(-1, keepdims=True)
            / jnp.maximum(real.sum(-1, keepdims=True), 1.0), advantages.shape)
    return _clipped_surrogate(used, log_ratio, seq_advantages, mask, clip_low, clip_high)


def cispo_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                      mask: jax.Array, clip_low: float,
                      clip_high: float) -> tuple[jax.Array, Metrics]:
    """CISPO (MiniMax-M1, MiniMax 2025, eq. 4), negated: ``-masked_mean(sg[r_hat] * A *
    log pi)`` with the clipped importance weight ``r_hat = clip(r, 1 - clip_low, 1 +
    clip_high)`` held constant, so every token keeps a gradient ``-r_hat A grad log pi``
    (PPO's clip zeroes it). The log-ratio stands in for ``log pi`` (same gradient, loss 0 at
    ratio 1). logp, old_logp, advantages, mask: [B, T]; metrics as
    :func:`ppo_policy_loss`'s, ``policy/clipfrac`` counting tokens whose weight was clipped.
    """
    advantages = jax.lax.stop_gradient(advantages)
    log_ratio = logp - jax.lax.stop_gradient(old_logp)
    ratio = jnp.exp(jax.lax.stop_gradient(log_ratio))
    weight = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = masked_mean(-weight * advantages * log_ratio, mask)
    metrics = {
        "loss/policy": loss,
        "policy/approxkl": 0.5 * masked_mean(jax.lax.stop_gradient(log_ratio) ** 2, mask),
        "policy/clipfrac": masked_mean((weight != ratio).astype(jnp.float32), mask),
        "val/ratio": masked_mean(ratio, mask),
    }
    return loss, metrics


# ``ppo.policy_loss`` name -> the loss of (logp, old_logp, advantages, mask, clip_low,
# clip_high), each [B, T].
POLICY_LOSSES: dict[str, Callable[..., tuple[jax.Array, Metrics]]] = {
    "ppo": ppo_policy_loss,
    "gspo": gspo_policy_loss,
    "gspo_token": lambda *args: gspo_policy_loss(*args, token_level=True),
    "cispo": cispo_policy_loss,
}

# ``ppo.loss_agg``: how the per-token losses of an optimizer batch are averaged.
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                     "seq_mean_token_sum_norm")


def aggregation_weights(mask: jax.Array, loss_agg: str) -> jax.Array:
    """Per-token weights [B, T] whose weighted mean (``masked_mean(x, weights)``) over the
    whole optimizer batch is, times :func:`aggregation_scale`, the ``loss_agg`` aggregate
    of per-token losses ``x`` [B, T]:

    * ``token_mean``: ``sum_{i,t} x / sum_{i,t} 1`` — every token counts once (DAPO, Yu et
      al. 2025, eq. 8);
    * ``seq_mean_token_mean``: ``1/G sum_i mean_t x`` — every sequence counts once (GRPO,
      Shao et al. 2024, eq. 3);
    * ``seq_mean_token_sum``: ``1/G sum_i sum_t x``;
    * ``seq_mean_token_sum_norm``: ``1/(G L) sum_i sum_t x`` with L the response length
      (Dr. GRPO's constant, Liu et al. 2025, eq. 2).

    G counts the sequences with a real token. The weights depend on their own row only, so
    a micro-batch computes its rows' weights alone; the accumulator's normaliser (the sum of
    the weights) and the scale are the whole batch's, so accumulating gradients over
    micro-batches gives the one-batch gradient for every aggregation.
    """
    mask = mask.astype(jnp.float32)
    if loss_agg == "seq_mean_token_mean":
        return mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    return mask


def aggregation_scale(mask: jax.Array, loss_agg: str) -> jax.Array:
    """The factor taking the weighted mean of :func:`aggregation_weights` over the whole
    optimizer batch ``mask`` [B, T] to the ``loss_agg`` aggregate: ``N / G`` for
    ``seq_mean_token_sum`` (N real tokens, G non-empty sequences), ``N / (G L)`` for
    ``seq_mean_token_sum_norm`` (L = T, the response length), else 1."""
    mask = mask.astype(jnp.float32)
    tokens = mask.sum()
    sequences = jnp.maximum((mask.sum(-1) > 0).sum(), 1.0)
    if loss_agg == "seq_mean_token_sum":
        return tokens / sequences
    if loss_agg == "seq_mean_token_sum_norm":
        return tokens / (sequences * mask.shape[1])
    return jnp.ones(())


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
               mask: jax.Array, clip: float = 0.2) -> tuple[jax.Array, Metrics]:
    """Clipped value loss ``0.5 * masked_mean(max((v-R)^2, (v_clip-R)^2))``.

    ``v_clip = old + clip(v - old, -eps, eps)``. Huang et al. 2023 ("N implementation details
    of RLHF"), OpenAI lm-human-preferences; docs/design.md, PPO detail 12.

    values, old_values, returns, mask: [B, T]. Metrics: loss/value, val/clipfrac (fraction of
    real tokens where the clipped error is the larger one).
    """
    old_values = jax.lax.stop_gradient(old_values)
    returns = jax.lax.stop_gradient(returns)
    v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)  # [B, T]
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(vf1, vf2), mask)
    metrics = {
        "loss/value": loss,
        "val/clipfrac": masked_mean((vf2 > vf1).astype(jnp.float32), mask),
    }
    return loss, metrics


def entropy_bonus(entropies: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metrics]:
    """Mean per-token entropy ``H = -sum_v p log p`` of the policy over real tokens.

    The entropy term of Schulman et al. 2017, eq. 9 (``c2 * S[pi](s)``). Returned as a positive
    quantity: the caller subtracts ``coef * entropy`` from the loss.

    entropies: [B, T] (``scoring.token_entropies``, fp32); mask: [B, T]. Metric:
    policy/entropy (mean per-token entropy).
    """
    value = masked_mean(entropies, mask)
    return value, {"policy/entropy": value}
