"""KL estimators and KL-penalty controllers (pure functions on a small state pytree).

The fixed controller is the absence of an update: beta stays at ``ppo.kl_coef``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.choices import KL_ESTIMATORS

KLState = dict[str, jax.Array]

ESTIMATORS = KL_ESTIMATORS   # the names of jaxrlhf.choices


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020,
    "Approximating KL divergence").

    With ``log r = ref_logp - logp``:
      k1 = -log r = logp - ref_logp          (unbiased, can be negative)
      k2 = 0.5 * (log r)^2                   (biased, low variance, >= 0)
      k3 = (r - 1) - log r                   (unbiased, >= 0)

    logp, ref_logp: [...] (same shape) -> [...].
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        neg = -log_ratio  # log r = ref - logp
        return jnp.expm1(neg) - neg
    raise ValueError(f"kl estimator must be one of {ESTIMATORS}, got {estimator!r}")


def init_kl_state(beta: float) -> KLState:
    """KL controller state ``{"beta": []}`` (checkpointed with the run, PPO detail 8)."""
    return {"beta": jnp.asarray(beta, jnp.float32)}


def update_adaptive_kl(state: KLState, observed_kl: jax.Array, n_steps: int | jax.Array,
                       target: float = 6.0, horizon: float = 10000.0) -> KLState:
    """Adaptive KL controller (Ziegler et al. 2019, §2.2, eq. 3).

    ``err = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + err * n_steps / horizon)``,
    with ``n_steps`` the number of episodes in the batch. observed_kl: [] (mean sequence KL).
    """
    err = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    mult = 1.0 + err * jnp.asarray(n_steps, jnp.float32) / horizon
    return {**state, "beta": state["beta"] * mult}
