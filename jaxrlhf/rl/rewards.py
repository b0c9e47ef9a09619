"""Reward shaping for RLHF PPO: per-token KL penalty, score at EOS, EOS handling."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.rl.kl import kl_estimate


def shaped_rewards(scores: jax.Array, logp: jax.Array, ref_logp: jax.Array, mask: jax.Array,
                   beta: float | jax.Array, estimator: str = "k1") -> tuple[jax.Array, jax.Array]:
    """Per-token reward ``r_t = -beta * KL_t`` plus the sequence score at the last real token.

    Ziegler et al. 2019 eq. 2 / Stiennon et al. 2020 eq. 1; Huang et al. 2023 details
    (docs/design.md, PPO details 6–7). KL_t uses estimator k1/k2/k3 (Schulman 2020).

    scores: [B]; logp, ref_logp, mask: [B, T] (mask contiguous from t=0).
    Returns (rewards [B, T], non_score_reward [B, T]); both are 0 on padding. A row with an
    empty mask gets no score.
    """
    m = mask.astype(jnp.float32)
    non_score = -beta * kl_estimate(logp.astype(jnp.float32), ref_logp.astype(jnp.float32),
                                    estimator) * m  # [B, T]
    T = mask.shape[-1]
    last = m.sum(-1).astype(jnp.int32) - 1  # [B]
    at_last = (jnp.arange(T)[None, :] == last[:, None]).astype(jnp.float32)  # [B, T]
    rewards = non_score + at_last * scores.astype(jnp.float32)[:, None]
    return rewards, non_score


def apply_missing_eos_penalty(scores: jax.Array, has_eos: jax.Array,
                              penalty: float = -1.0) -> jax.Array:
    """Replace the score of responses without an EOS by a fixed ``penalty``.

    Huang et al. 2023, "N implementation details of RLHF" (PPO detail 5).
    scores: [B]; has_eos: [B] bool -> [B].
    """
    return jnp.where(has_eos, scores, jnp.asarray(penalty, scores.dtype))


def truncate_after_token(tokens: jax.Array, mask: jax.Array, trunc_token_id: int,
                         min_length: int) -> jax.Array:
    """New mask ending after the first ``trunc_token_id`` at position >= ``min_length``.

    The optional truncation token of OpenAI lm-human-preferences (e.g. "." after a minimum
    length), Huang et al. 2023 (PPO detail 4). Tokens before ``min_length`` are never a
    truncation point; rows with no such token keep their mask. tokens, mask: [B, T] -> [B, T].
    """
    T = tokens.shape[-1]
    hit = ((tokens == trunc_token_id) & (jnp.arange(T)[None, :] >= min_length)
           & (mask > 0)).astype(jnp.int32)
    before = jnp.cumsum(hit, axis=-1) - hit
    return (mask * (before == 0)).astype(mask.dtype)


def overlong_penalty(lengths: jax.Array, max_length: int, buffer: int,
                     factor: float = 1.0) -> jax.Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), times ``factor``:
    ``0`` for ``|y| <= L_max - L_cache``, ``((L_max - L_cache) - |y|) / L_cache`` up to
    ``L_max``, so ``-1`` for a response that used the whole budget, with ``L_max`` the
    response length and ``L_cache`` the ``buffer``, in tokens. lengths: [B] -> [B]."""
    excess = jnp.maximum(lengths.astype(jnp.float32) - (max_length - buffer), 0.0)
    return -factor * jnp.minimum(excess / buffer, 1.0)
