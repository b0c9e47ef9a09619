"""Pure loss terms. Each returns ``(loss, metrics)``: the scalar mean the paper defines and a
dict of scalar metrics.

Every mean over tokens is a masked mean (docs/design.md, rule 3). A stage that accumulates
gradients over micro-batches weights each micro-batch's means by its count
(``jaxrlhf.optim.accumulated_gradients``), which gives the full batch's mean exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.scoring import predicted_token_stats

Metrics = dict[str, jax.Array]


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over the positions where ``mask`` is true (0 where the mask is empty)."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def sft_nll(log_probs: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metrics]:
    """Token-level negative log-likelihood, averaged over response tokens.

    The supervised fine-tuning objective of InstructGPT (Ouyang et al. 2022, §3.5): maximum
    likelihood on demonstration responses, with prompt and padding tokens masked out.

    log_probs: [batch, seq] log p of each target token; mask: [batch, seq], true on the
    response tokens that count. Returns the mean NLL per counted token, and the number of
    counted tokens as ``tokens``.
    """
    nll = -log_probs  # [batch, seq]
    loss = masked_mean(nll, mask)
    return loss, {"loss": loss, "tokens": mask.sum().astype(jnp.float32)}


def lm_nll(graphdef: nnx.GraphDef, params: nnx.State,
           batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
    """``sft_nll`` of a causal LM on right-padded rows ``{input_ids, attention_mask,
    loss_mask}`` [batch, seq]: position ``t`` predicts ``input_ids[:, t + 1]``, counted where
    ``loss_mask[:, 1:]`` is 1 (the response tokens and their EOS). The SFT loss, and the
    pretraining term of PPO-ptx (Ouyang et al. 2022, eq. 2). Chunked over positions, without
    [batch, seq, vocab] logits, when the model's ``logits_chunk`` > 0."""
    log_probs, _ = predicted_token_stats(graphdef, params, batch["input_ids"],
                                         batch["attention_mask"])
    return sft_nll(log_probs, batch["loss_mask"][:, 1:])


# --------------------------------------------------------------------------------------
# Reward model (Bradley–Terry)
# --------------------------------------------------------------------------------------


def bradley_terry(r_chosen: jax.Array, r_rejected: jax.Array,
                  margin: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Bradley–Terry pairwise loss ``mean(-log sigmoid(r_c - r_r - m))``.

    Ouyang et al. 2022 (InstructGPT) eq. 1; optional margin ``m(r)`` from Touvron et al. 2023
    (Llama 2) eq. 2. docs/design.md, PPO details 19–20.

    r_chosen, r_rejected: [B]; margin: [B] or None. Metrics: rm/loss, rm/accuracy (fraction
    with r_c > r_r), rm/chosen, rm/rejected (mean rewards), rm/margin (mean r_c - r_r).
    """
    r_chosen = r_chosen.astype(jnp.float32)
    r_rejected = r_rejected.astype(jnp.float32)
    diff = r_chosen - r_rejected  # [B]
    logits = diff if margin is None else diff - margin.astype(jnp.float32)
    loss = -jax.nn.log_sigmoid(logits).mean()
    metrics = {
        "rm/loss": loss,
        "rm/accuracy": (diff > 0).astype(jnp.float32).mean(),
        "rm/chosen": r_chosen.mean(),
        "rm/rejected": r_rejected.mean(),
        "rm/margin": diff.mean(),
    }
    return loss, metrics


def reward_centering(r_chosen: jax.Array, r_rejected: jax.Array,
                     coef: float) -> tuple[jax.Array, Metrics]:
    """Reward-centering auxiliary loss ``coef * mean((r_c + r_r)^2)``.

    Eisenstein et al. 2023 ("Helping or herding?") §3, as TRL's ``center_rewards_coefficient``
    (default 1e-2). Pushes rewards towards zero mean. r_chosen, r_rejected: [B].
    """
    s = r_chosen.astype(jnp.float32) + r_rejected.astype(jnp.float32)  # [B]
    loss = coef * jnp.mean(s ** 2)
    return loss, {"rm/center_loss": loss}


# --------------------------------------------------------------------------------------
# Direct preference optimisation (the DPO family)
# --------------------------------------------------------------------------------------


class PreferenceLogProbs(NamedTuple):
    """Sequence log-probabilities of a batch of pairs, each [pairs]: log pi(y | x) summed
    over the response tokens (EOS included) under the policy and the frozen reference, and
    the response lengths in tokens."""
    chosen: jax.Array
    rejected: jax.Array
    ref_chosen: jax.Array
    ref_rejected: jax.Array
    chosen_tokens: jax.Array
    rejected_tokens: jax.Array


def _implicit_reward_metrics(reward_chosen: jax.Array, reward_rejected: jax.Array,
                             x: PreferenceLogProbs) -> Metrics:
    """TRL's DPO metrics: mean implicit rewards, how often the chosen one is larger, their
    mean margin, and the mean policy log-probs."""
    return {"rewards/chosen": reward_chosen.mean(), "rewards/rejected": reward_rejected.mean(),
            "rewards/accuracies": (reward_chosen > reward_rejected).astype(jnp.float32).mean(),
            "rewards/margins": (reward_chosen - reward_rejected).mean(),
            "logps/chosen": x.chosen.mean(), "logps/rejected": x.rejected.mean()}


def _log_ratios(x: PreferenceLogProbs) -> tuple[jax.Array, jax.Array]:
    """``log pi / pi_ref`` of the chosen and of the rejected responses, each [pairs]."""
    ref_c, ref_r = jax.lax.stop_gradient(x.ref_chosen), jax.lax.stop_gradient(x.ref_rejected)
    return x.chosen - ref_c, x.rejected - ref_r


def dpo_loss(x: PreferenceLogProbs, beta: float,
             label_smoothing: float = 0.0) -> tuple[jax.Array, Metrics]:
    """Direct preference optimisation (Rafailov et al. 2023, eq. 7), or its conservative
    form when ``label_smoothing`` eps > 0 (Mitchell 2023, "A note on DPO with noisy
    preferences"; TRL's ``label_smoothing``).

    With ``h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)``:
    ``L = mean(-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h))``; eps = 0 is
    DPO. The implicit reward of a response is ``beta log pi(y)/pi_ref(y)`` (eq. 5).
    """
    ratio_c, ratio_r = _log_ratios(x)
    logits = beta * (ratio_c - ratio_r)                                   # [pairs]
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
              - label_smoothing * jax.nn.log_sigmoid(-logits))
    return losses.mean(), _implicit_reward_metrics(
        beta * jax.lax.stop_gradient(ratio_c), beta * jax.lax.stop_gradient(ratio_r), x)


def ipo_loss(x: PreferenceLogProbs, beta: float) -> tuple[jax.Array, Metrics]:
    """Identity preference optimisation (Azar et al. 2023, "A General Theoretical Paradigm
    to Understand Learning from Human Preferences", eq. 17) with tau = ``beta``:
    ``L = mean((h - 1 / (2 tau))^2)``, ``h`` the difference of log-ratios as in DPO, over
    sequence log-probs summed over tokens as in the paper."""
    ratio_c, ratio_r = _log_ratios(x)
    loss = jnp.mean((ratio_c - ratio_r - 1.0 / (2.0 * beta)) ** 2)
    return loss, _implicit_reward_metrics(
        beta * jax.lax.stop_gradient(ratio_c), beta * jax.lax.stop_gradient(ratio_r), x)


def simpo_loss(x: PreferenceLogProbs, beta: float, gamma: float) -> tuple[jax.Array, Metrics]:
    """SimPO (Meng, Xia & Chen 2024, eq. 6): reference-free and length-normalised,
    ``L = mean(-log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma))``.
    The implicit reward of a response is ``beta/|y| log pi(y)`` (eq. 4)."""
    reward_c = beta * x.chosen / jnp.maximum(x.chosen_tokens, 1.0)
    reward_r = beta * x.rejected / jnp.maximum(x.rejected_tokens, 1.0)
    loss = -jax.nn.log_sigmoid(reward_c - reward_r - gamma).mean()
    return loss, _implicit_reward_metrics(jax.lax.stop_gradient(reward_c),
                                          jax.lax.stop_gradient(reward_r), x)


def _log1m_exp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far below it (Maechler 2012,
    "Accurately computing log(1 - exp(-|a|))")."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo_loss(x: PreferenceLogProbs, lam: float) -> tuple[jax.Array, Metrics]:
    """ORPO (Hong, Lee & Thorne 2024, eqs. 2-7): reference-free, ``L = L_SFT + lam * L_OR``.

    With the length-normalised likelihood ``log P(y|x) = 1/|y| sum_t log pi(y_t)`` (eq. 4),
    ``L_SFT = mean(-log P(y_w|x))`` and ``L_OR = mean(-log sigmoid(log odds(y_w) - log
    odds(y_l)))`` with ``log odds(y) = log P - log(1 - P)``. The odds use the *mean*
    token log-prob, as the paper and TRL's ``ORPOTrainer`` do; Tunix 0.1.7 feeds summed
    log-probs to the odds (and the mean to L_SFT), a different quantity for any response
    longer than one token. The implicit rewards logged are ``lam * log P``.
    """
    mean_c = x.chosen / jnp.maximum(x.chosen_tokens, 1.0)
    mean_r = x.rejected / jnp.maximum(x.rejected_tokens, 1.0)
    log_odds = (mean_c - mean_r) - (_log1m_exp(mean_c) - _log1m_exp(mean_r))
    nll = -mean_c.mean()
    odds_loss = -jax.nn.log_sigmoid(log_odds).mean()
    metrics = _implicit_reward_metrics(jax.lax.stop_gradient(lam * mean_c),
                                       jax.lax.stop_gradient(lam * mean_r), x)
    return nll + lam * odds_loss, {**metrics, "orpo/nll": nll, "orpo/odds_loss": odds_loss,
                                   "orpo/log_odds_ratio": log_odds.mean()}


# ``dpo.loss`` name -> the loss with its hyper-parameters read from the DPO settings
# (``beta``, ``label_smoothing``, ``simpo_gamma``; ORPO's lambda is ``beta``, as in TRL).
PREFERENCE_LOSSES: dict[str, Callable[[PreferenceLogProbs, Any], tuple[jax.Array, Metrics]]] = {
    "dpo": lambda x, s: dpo_loss(x, s.beta),
    "cdpo": lambda x, s: dpo_loss(x, s.beta, s.label_smoothing),
    "ipo": lambda x, s: ipo_loss(x, s.beta),
    "simpo": lambda x, s: simpo_loss(x, s.beta, s.simpo_gamma),
    "orpo": lambda x, s: orpo_loss(x, s.beta),
}
# Losses that read no reference log-probs (no reference pass before training).
REFERENCE_FREE_LOSSES = ("simpo", "orpo")


class UnpairedLogProbs(NamedTuple):
    """Sequence log-probabilities of a batch of unpaired examples, each [batch]: log pi(y|x)
    summed over the completion's tokens (EOS included) under the policy and the frozen
    reference; the same for the *mismatched* completion y' of each row (another row's
    completion after this row's prompt), which estimates KTO's reference point; and
    ``desirable`` (1.0 for a desirable completion, 0.0 for an undesirable one)."""
    policy: jax.Array
    reference: jax.Array
    policy_kl: jax.Array
    reference_kl: jax.Array
    desirable: jax.Array


def kl_estimate(x: UnpairedLogProbs) -> jax.Array:
    """The batch mean of ``log pi(y'|x) - log pi_ref(y'|x)`` over the mismatched pairs
    (x, y'): the estimate of KL(pi(y'|x) || pi_ref(y'|x)) behind KTO's reference point,
    before clamping (it is negative when the policy has moved mass off the data's
    completions, and z_0 then 0)."""
    return jnp.mean(x.policy_kl - x.reference_kl)


def kto_reference_point(x: UnpairedLogProbs) -> jax.Array:
    """KTO's reference point z_0 = KL(pi(y'|x) || pi_ref(y'|x)) (Ethayarajh et al. 2024,
    eq. 8), estimated as TRL's ``KTOTrainer`` does: :func:`kl_estimate` over the batch's
    mismatched pairs, clamped at 0 and held constant (no gradient flows through it)."""
    return jax.lax.stop_gradient(jnp.maximum(kl_estimate(x), 0.0))


def kto_loss(x: UnpairedLogProbs, beta: float, lambda_d: float = 1.0,
             lambda_u: float = 1.0) -> tuple[jax.Array, Metrics]:
    """Kahneman–Tversky optimisation (Ethayarajh et al. 2024, "KTO: Model Alignment as
    Prospect Theoretic Optimization", eqs. 7-8): from unpaired desirable / undesirable
    examples, ``L = mean(lambda_y - v(x, y))`` with ``r = log pi(y|x) - log pi_ref(y|x)``,
    the reference point ``z_0`` of :func:`kto_reference_point` and the value
    ``v = lambda_D sigmoid(beta (r - z_0))`` for a desirable y,
    ``v = lambda_U sigmoid(beta (z_0 - r))`` for an undesirable one.

    As TRL: log-probs summed over the completion's tokens; the mean over every example of
    the batch (desirable and undesirable together, so ``lambda_D`` / ``lambda_U`` also
    weigh the two kinds by their counts); z_0 from each batch (under gradient accumulation
    each micro-batch's own, as TRL's per-step estimate, so the accumulated gradient equals
    the whole batch's only up to z_0). The implicit reward logged is ``beta r``;
    ``rewards/accuracies`` is the fraction of examples on their label's side of the
    reference point (r > z_0 for a desirable one, r < z_0 for an undesirable one).
    """
    ratio = x.policy - jax.lax.stop_gradient(x.reference)                  # [batch]
    z0 = kto_reference_point(x)
    desirable = x.desirable.astype(jnp.float32)                            # [batch]
    weight = desirable * lambda_d + (1.0 - desirable) * lambda_u           # lambda_y
    value = (desirable * lambda_d * jax.nn.sigmoid(beta * (ratio - z0))
             + (1.0 - desirable) * lambda_u * jax.nn.sigmoid(beta * (z0 - ratio)))
    loss = jnp.mean(weight - value)
    reward = beta * jax.lax.stop_gradient(ratio)                           # [batch]
    reward_chosen, reward_rejected = masked_mean(reward, desirable), masked_mean(reward,
                                                                                1 - desirable)
    right_side = jnp.where(desirable > 0, ratio > z0, ratio < z0).astype(jnp.float32)
    return loss, {"rewards/chosen": reward_chosen, "rewards/rejected": reward_rejected,
                  "rewards/margins": reward_chosen - reward_rejected,
                  "rewards/accuracies": right_side.mean(),
                  "logps/chosen": masked_mean(x.policy, desirable),
                  "logps/rejected": masked_mean(x.policy, 1 - desirable),
                  "kto/kl": z0, "kto/kl_estimate": jax.lax.stop_gradient(kl_estimate(x)),
                  "kto/desirable": desirable.mean()}


# ``dpo.loss`` name -> a loss of unpaired examples (``dpo.beta``, ``dpo.kto_lambda_d``,
# ``dpo.kto_lambda_u``); the DPO stage trains these on unpaired data, not pairs.
UNPAIRED_LOSSES: dict[str, Callable[[UnpairedLogProbs, Any], tuple[jax.Array, Metrics]]] = {
    "kto": lambda x, s: kto_loss(x, s.beta, s.kto_lambda_d, s.kto_lambda_u),
}


# --------------------------------------------------------------------------------------
# Bits per byte (pretraining's held-out measure)
# --------------------------------------------------------------------------------------


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """``total_nats / (total_bytes * ln 2)``: the bits a model needs per UTF-8 byte of text.

    Tokenizer-independent, unlike the loss per token: BPB = (L_T / L_B) * l / ln 2 for mean
    per-token loss l (nats) over text of L_T tokens and L_B UTF-8 bytes (Gao et al. 2020,
    "The Pile: An 800GB Dataset of Diverse Text for Language Modeling").

    For held-out documents packed by ``jaxrlhf.data.packing.pack_documents``: l is the mean
    of ``lm_nll`` over all their counted targets (weighted by each batch's ``tokens``),
    L_T the packing's ``stats.tokens`` (every document token plus one EOS per document) and
    L_B ``utf8_bytes`` of the documents' texts, so ``total_nats = l * stats.tokens``. The
    tokens the loss does not predict (each row's first, the dropped remainder, and with
    segment-masked attention each document's first) are charged the mean loss of the rest,
    and each EOS is charged to its document's text (the model pays to say where it ends).
    Compare runs with the same attention mode: segment masking never predicts a document's
    first token, the hardest of each.
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes={total_bytes}: bits per byte needs some text")
    return float(total_nats) / (total_bytes * math.log(2))


def utf8_bytes(texts: Iterable[str]) -> int:
    """The number of UTF-8 bytes of ``texts`` (L_B of :func:`bits_per_byte`)."""
    return sum(len(text.encode("utf-8")) for text in texts)
