"""Pure loss terms. Each returns ``(loss, metrics)`` with a scalar loss and a dict of scalars.

Every mean over tokens is a masked mean (DESIGN.md rule 3).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over the positions where ``mask`` is true (0 where the mask is empty)."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) under ``softmax(logits)``, computed in fp32.

    logits: [batch, seq, vocab]; targets: [batch, seq] -> [batch, seq].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def sft_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metrics]:
    """Token-level negative log-likelihood, averaged over response tokens.

    The supervised fine-tuning objective of InstructGPT (Ouyang et al. 2022, §3.5): maximum
    likelihood on demonstration responses, with prompt and padding tokens masked out.

    logits: [batch, seq, vocab] predicting ``targets``: [batch, seq]; mask: [batch, seq],
    true on the response tokens that count. Returns the mean NLL per counted token, and the
    number of counted tokens as ``tokens``.
    """
    nll = -token_log_probs(logits, targets)  # [batch, seq]
    loss = masked_mean(nll, mask)
    return loss, {"loss": loss, "tokens": mask.sum().astype(jnp.float32)}
