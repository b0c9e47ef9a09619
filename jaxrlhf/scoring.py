"""Operations on token sequences: what every stage computes from a model and a masked batch.

Sequences are ``[batch, seq]`` token ids with an attention mask (1 = real token). Prompts are
left-padded and responses right-padded, so a prompt + response sequence is their
concatenation and position ids come from the mask (docs/design.md, PPO detail 2). Sampling,
the trainers and the reward model all score sequences through these functions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids of a (left- or right-) padded batch: ``cumsum(mask) - mask``. [batch, seq]."""
    mask = mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) - mask


def join(prompt: jax.Array, prompt_mask: jax.Array, response: jax.Array,
         response_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Left-padded prompts [batch, P] followed by right-padded responses [batch, R]:
    the sequence and its mask, each [batch, P + R]."""
    return (jnp.concatenate([prompt, response], axis=1),
            jnp.concatenate([prompt_mask, response_mask], axis=1))


def forward(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array,
            mask: jax.Array) -> jax.Array:
    """The model's output at every position of a padded batch: logits [batch, seq, vocab] of a
    causal LM, or values [batch, seq] of a scalar model."""
    out, _ = nnx.merge(graphdef, params)(ids, positions_from_mask(mask), mask)
    return out


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) under ``softmax(logits)``, computed in fp32.

    logits: [batch, seq, vocab]; targets: [batch, seq] -> [batch, seq].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_entropies(logits: jax.Array) -> jax.Array:
    """Entropy ``-sum_v p log p`` of ``softmax(logits)`` at each position, in fp32.

    logits: [batch, seq, vocab] -> [batch, seq].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)


def response_outputs(graphdef: nnx.GraphDef, params: nnx.State, seq: jax.Array,
                     seq_mask: jax.Array, prompt_len: int) -> jax.Array:
    """Outputs at the positions that predict the response tokens (position ``prompt_len - 1
    + t`` predicts response token ``t``): logits [batch, resp, vocab] of a causal LM, or
    values [batch, resp] of a scalar model (V of the state before each response token).

    seq, seq_mask: [batch, prompt_len + resp].
    """
    return forward(graphdef, params, seq, seq_mask)[:, prompt_len - 1:-1]


def response_log_probs(graphdef: nnx.GraphDef, params: nnx.State, seq: jax.Array,
                       seq_mask: jax.Array, prompt_len: int,
                       temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Log-probs [batch, resp] of the response tokens under ``logits / temperature`` (the
    distribution that sampled them, PPO detail 3), and those scaled logits."""
    logits = response_outputs(graphdef, params, seq, seq_mask, prompt_len) / temperature
    return token_log_probs(logits, seq[:, prompt_len:]), logits


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row (left- or right-padded). mask: [batch, seq]."""
    seq = mask.shape[-1]
    return seq - 1 - jnp.argmax(jnp.flip(mask, axis=-1), axis=-1)


def last_token_scores(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array,
                      mask: jax.Array) -> jax.Array:
    """A scalar model's output at each row's last real token (the EOS of a scored response,
    PPO detail 6). ids, mask: [batch, seq] -> [batch]."""
    values = forward(graphdef, params, ids, mask)                          # [batch, seq]
    return jnp.take_along_axis(values, last_token_index(mask)[:, None], axis=-1)[:, 0]


def reward_scores(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array, mask: jax.Array,
                  gain: float | jax.Array, bias: float | jax.Array) -> jax.Array:
    """A reward model's normalised score ``gain * raw + bias`` of each sequence, where raw is
    its output at the last real token (PPO detail 9). ids, mask: [batch, seq] -> [batch]."""
    return gain * last_token_scores(graphdef, params, ids, mask) + bias


def sequence_kl(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """KL(policy || reference) of each sampled response: the sum over its real tokens of the
    k1 estimate ``logprobs - ref_logprobs``. [batch, resp] -> [batch]."""
    return ((logprobs - ref_logprobs) * mask).sum(-1)


def response_token_mask(mask: jax.Array, prompt_length: jax.Array) -> jax.Array:
    """1 on the response tokens (and their EOS) of right-padded ``[prompt][response][EOS]``
    rows whose prompts are ``prompt_length`` [batch] tokens long. mask: [batch, seq]."""
    positions = jnp.arange(mask.shape[-1])[None, :]
    return mask * (positions >= prompt_length[:, None]).astype(mask.dtype)


def sequence_log_probs(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array,
                       mask: jax.Array, prompt_length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log pi(response | prompt) of right-padded rows — the sum of the response tokens'
    log-probs, EOS included — and the number of those tokens, each [batch].

    ids, mask: [batch, seq]; prompt_length: [batch]. ``logits[:, :-1]`` predict
    ``ids[:, 1:]``, counted where the target is a response token.
    """
    logits = forward(graphdef, params, ids, mask)                        # [batch, seq, vocab]
    logp = token_log_probs(logits[:, :-1], ids[:, 1:])                   # [batch, seq - 1]
    targets = response_token_mask(mask, prompt_length)[:, 1:].astype(jnp.float32)
    return (logp * targets).sum(-1), targets.sum(-1)
