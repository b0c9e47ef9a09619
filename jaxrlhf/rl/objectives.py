"""PPO's objective as a weighted sum of named loss terms.

Each term maps the model outputs on a micro-batch (:class:`TermInputs`) to ``(loss,
metrics)``, a mean over the micro-batch's real response tokens weighted as the loss
aggregation ``ppo.loss_agg`` says (``policy_losses.aggregation_weights``). ``objective_terms``
turns the settings into a list of ``(coefficient, term name)`` and :func:`combine` adds them
up, so a new term is one function in :data:`TERMS` plus the config field that weights it,
and a notebook can switch any term off by its coefficient.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax

from jaxrlhf import losses, policy_losses
from jaxrlhf.rl.kl import kl_estimate
from jaxrlhf.sections import PPOSettings

Metrics = dict[str, jax.Array]


class TermInputs(NamedTuple):
    """What the terms read for one micro-batch; per-token arrays are [batch, resp]."""
    logprobs: jax.Array        # log-probs of the response tokens under the current policy
    entropies: jax.Array | None   # of the policy's logits / temperature (with ent_coef > 0)
    values: jax.Array | None   # the value model's V(s_t) before each response token (None:
                               # a critic-free advantage estimator)
    rollout: Mapping[str, jax.Array]   # the minibatch's rollout fields (old log-probs, ...)
    mask: jax.Array            # the loss aggregation's weights of the real response tokens
                               # (policy_losses.aggregation_weights; 1 each for "token_mean")


Term = Callable[[TermInputs, PPOSettings], tuple[jax.Array, Metrics]]


def policy_term(x: TermInputs, s: PPOSettings) -> tuple[jax.Array, Metrics]:
    """The policy loss ``ppo.policy_loss`` (``policy_losses.POLICY_LOSSES``: PPO's clipped
    surrogate, GSPO, GSPO-token, CISPO) with the clip range ``[1 - clip_low, 1 +
    clip_high]``, on the rollout's advantages (whitened per minibatch where the estimator
    calls for it)."""
    return policy_losses.POLICY_LOSSES[s.policy_loss](
        x.logprobs, x.rollout["logprobs"], x.rollout["advantages"], x.mask, s.clip_low,
        s.clip_high)


def value_term(x: TermInputs, s: PPOSettings) -> tuple[jax.Array, Metrics]:
    """Clipped value loss against the GAE returns (PPO detail 12)."""
    return policy_losses.value_loss(x.values, x.rollout["values"], x.rollout["returns"], x.mask,
                             clip=s.value_clip)


def entropy_term(x: TermInputs, s: PPOSettings) -> tuple[jax.Array, Metrics]:
    """Mean per-token entropy of the sampling distribution (Schulman et al. 2017, eq. 9);
    weighted by ``-ent_coef``, a bonus."""
    del s
    return policy_losses.entropy_bonus(x.entropies, x.mask)


def kl_term(x: TermInputs, s: PPOSettings) -> tuple[jax.Array, Metrics]:
    """KL(policy || reference) as a loss term rather than a reward penalty (GRPO-style;
    Shao et al. 2024, DeepSeekMath eq. 3), with the per-token estimator ``kl_estimator``
    (Schulman 2020). The reference log-probs get no gradient."""
    kl = kl_estimate(x.logprobs, jax.lax.stop_gradient(x.rollout["ref_logprobs"]),
                     s.kl_estimator)                                        # [batch, resp]
    loss = losses.masked_mean(kl, x.mask)
    return loss, {"loss/kl": loss}


TERMS: dict[str, Term] = {
    "policy": policy_term,
    "value": value_term,
    "entropy": entropy_term,
    "kl": kl_term,
}


def objective_terms(s: PPOSettings, kl_coef: float | jax.Array) -> list[tuple[float | jax.Array, str]]:
    """The ``(coefficient, term)`` list the settings ask for: the policy term, ``vf_coef`` x
    the value term (when there is a value model), ``-ent_coef`` x the entropy (when on), and
    ``kl_coef`` (the controller's beta) x the KL term when the KL is a loss rather than in
    the reward."""
    terms: list[tuple[float | jax.Array, str]] = [(1.0, "policy")]
    if s.uses_value_model:
        terms.append((s.vf_coef, "value"))
    if s.ent_coef > 0:
        terms.append((-s.ent_coef, "entropy"))
    if not s.kl_in_reward:
        terms.append((kl_coef, "kl"))
    return terms


def combine(terms: Sequence[tuple[float | jax.Array, str]], inputs: TermInputs,
            s: PPOSettings) -> tuple[jax.Array, Metrics]:
    """``sum_i coef_i * term_i(inputs)`` and the terms' metrics, plus ``loss/total``."""
    total, metrics = None, {}
    for coef, name in terms:
        value, term_metrics = TERMS[name](inputs, s)
        total = coef * value if total is None else total + coef * value
        metrics.update(term_metrics)
    metrics["loss/total"] = total
    return total, metrics
