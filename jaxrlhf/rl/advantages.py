"""Advantage estimators by name — GAE with a learned value, and the critic-free GRPO, RLOO
and REINFORCE — and masked whitening.

Every estimator maps the rollout's per-token rewards ``[batch, resp]`` (the sequence score
at the last real token plus, with ``kl_in_reward``, the per-token KL penalty), the value
model's values and the response mask to per-token advantages and returns. The critic-free
ones credit every token of a response with one sequence-level advantage computed against
the other responses to the same prompt: the batch holds ``group_size`` consecutive
responses per prompt. ``ppo.advantage`` picks one from :data:`ESTIMATORS`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrlhf.choices import ADVANTAGE_KINDS
from jaxrlhf.losses import masked_mean


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) as a reverse ``lax.scan``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * A_{t+1}``;
    returns ``R_t = A_t + V_t``. Only real tokens count (docs/design.md, PPO detail 10): rewards and
    values at padded positions are treated as 0, so the value after the last real token is 0,
    and padded positions get advantage 0 and return 0.

    rewards, values, mask: [B, T] (mask contiguous from t=0) -> (advantages [B, T], returns [B, T]).
    """
    m = mask.astype(jnp.float32)
    r = rewards.astype(jnp.float32) * m
    v = values.astype(jnp.float32) * m
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)  # [B, T]
    deltas = r + gamma * next_v - v  # [B, T]

    def step(carry, xs):  # carry: [B]
        delta_t, m_t = xs
        adv = (delta_t + gamma * lam * carry) * m_t
        return adv, adv

    _, adv_rev = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]), (deltas.T, m.T), reverse=True)
    advantages = adv_rev.T  # [B, T]
    returns = (advantages + v) * m
    return advantages, returns


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """Whiten ``x`` with mean and unbiased variance over real tokens (as TRL ``masked_whiten``).

    Huang et al. 2023 ("N implementation details of RLHF"), docs/design.md, PPO detail 11. With
    ``shift_mean=False`` the mean is added back (used for reward whitening). Padded positions
    are returned as 0. x, mask: [...] -> [...].
    """
    m = mask.astype(jnp.float32)
    xf = x.astype(jnp.float32)
    mean = masked_mean(xf, m)
    n = m.sum()
    var = ((xf - mean) ** 2 * m).sum() / jnp.maximum(n - 1.0, 1.0)  # Bessel-corrected
    out = (xf - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return (out * m).astype(x.dtype)


class AdvantageOptions(NamedTuple):
    """What the estimators read from the PPO settings."""
    gamma: float
    lam: float
    group_size: int          # consecutive rows sampled from the same prompt
    scale_rewards: bool      # GRPO: divide by the group's std (False: Dr. GRPO)


def sequence_rewards(rewards: jax.Array, mask: jax.Array) -> jax.Array:
    """The return of each whole response, ``sum_t r_t`` over its real tokens. [batch, resp] ->
    [batch]."""
    return (rewards * mask.astype(rewards.dtype)).sum(-1)


def _groups(x: jax.Array, group_size: int) -> jax.Array:
    """[batch] -> [batch / group_size, group_size]: the rows sampled from one prompt."""
    return x.reshape(-1, group_size)


def _per_token(advantage: jax.Array, mask: jax.Array) -> jax.Array:
    """One advantage per response [batch] on each of its real tokens [batch, resp]."""
    return advantage[:, None] * mask.astype(jnp.float32)


def grpo_advantages(sequence_reward: jax.Array, group_size: int,
                    scale_rewards: bool = True, eps: float = 1e-4) -> jax.Array:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath §4.1.2, outcome
    supervision): ``(r_i - mean(r_group)) / (std(r_group) + eps)``, with the unbiased std
    as TRL computes it; ``scale_rewards=False`` leaves out the division (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", Dr. GRPO). [batch] -> [batch]."""
    r = _groups(sequence_reward.astype(jnp.float32), group_size)           # [prompts, G]
    centred = r - r.mean(-1, keepdims=True)
    if scale_rewards:
        centred = centred / (r.std(-1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(sequence_reward: jax.Array, group_size: int) -> jax.Array:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics", eq. 6; Kool et al.
    2019): ``r_i - 1/(k-1) sum_{j != i} r_j`` over the ``k`` responses to one prompt.
    [batch] -> [batch]."""
    r = _groups(sequence_reward.astype(jnp.float32), group_size)           # [prompts, k]
    others = (r.sum(-1, keepdims=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


def _gae(rewards, values, mask, o: AdvantageOptions):
    return gae(rewards, values * mask, mask, gamma=o.gamma, lam=o.lam)


def _grpo(rewards, values, mask, o: AdvantageOptions):
    del values
    adv = grpo_advantages(sequence_rewards(rewards, mask), o.group_size, o.scale_rewards)
    return _per_token(adv, mask), jnp.zeros_like(rewards)


def _rloo(rewards, values, mask, o: AdvantageOptions):
    del values
    adv = rloo_advantages(sequence_rewards(rewards, mask), o.group_size)
    return _per_token(adv, mask), jnp.zeros_like(rewards)


def _reinforce(rewards, values, mask, o: AdvantageOptions):
    """Return-to-go ``sum_{t' >= t} gamma^(t'-t) r_t'`` (Williams 1992): GAE with a zero
    value and lambda 1."""
    adv, _ = gae(rewards, jnp.zeros_like(values), mask, gamma=o.gamma, lam=1.0)
    return adv, jnp.zeros_like(rewards)


class Estimator(NamedTuple):
    """``advantages(rewards, values, mask, options) -> (advantages, returns)``, each
    [batch, resp], and what it needs (``jaxrlhf.choices.AdvantageKind``): a value model,
    groups of responses per prompt, per-minibatch whitening (PPO detail 11) in the update."""
    advantages: Callable[[jax.Array, jax.Array, jax.Array, AdvantageOptions],
                         tuple[jax.Array, jax.Array]]
    needs_values: bool
    needs_group: bool
    whiten: bool


_FUNCTIONS = {"gae": _gae, "grpo": _grpo, "rloo": _rloo, "reinforce": _reinforce}
# One estimator for each name of ``choices.ADVANTAGE_KINDS``, with the needs listed there.
ESTIMATORS: dict[str, Estimator] = {name: Estimator(_FUNCTIONS[name], *kind)
                                    for name, kind in ADVANTAGE_KINDS.items()}
