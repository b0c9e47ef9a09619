"""Generalised advantage estimation and masked whitening."""
from __future__ import annotations

import jax
import jax.numpy as jnp

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
