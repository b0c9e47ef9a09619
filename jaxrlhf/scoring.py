"""Operations on token sequences: what every stage computes from a model and a masked batch.

Sequences are ``[batch, seq]`` token ids with an attention mask (1 = real token; packed
pretraining rows may carry segment ids instead, ``jaxrlhf.data.packing``). Prompts are
left-padded and responses right-padded, so a prompt + response sequence is their
concatenation and position ids come from the mask (docs/design.md, PPO detail 2). Sampling,
the trainers and the reward model all score sequences through these functions.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.data.packing import segment_positions
from jaxrlhf.models.transformer import head_logits


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids [batch, seq] of a (left- or right-) padded batch, ``cumsum(mask) - mask``;
    of packed rows whose mask holds segment ids, restarting at 0 at each segment
    (``jaxrlhf.data.packing.segment_positions``, which is both)."""
    return segment_positions(mask)


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
                       seq_mask: jax.Array, prompt_len: int, temperature: float = 1.0,
                       with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs [batch, resp] of the response tokens under ``logits / temperature`` (the
    distribution that sampled them, PPO detail 3), and (``with_entropy``) the entropies of
    those distributions."""
    return predicted_token_stats(graphdef, params, seq, seq_mask, prompt_len - 1, temperature,
                                 with_entropy)


def predicted_token_stats(graphdef: nnx.GraphDef, params: nnx.State, seq: jax.Array,
                          seq_mask: jax.Array, start: int = 0, temperature: float = 1.0,
                          with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of the tokens ``seq[:, start + 1:]`` predicted at positions ``start ..
    seq - 2`` under ``logits / temperature`` of a causal LM, and (``with_entropy``, else
    None) the entropies of those distributions, each [batch, seq - 1 - start], in fp32.

    With the model's ``logits_chunk`` > 0 they come from the final hidden states chunk by
    chunk (:func:`chunked_token_stats`), never holding [batch, seq, vocab] logits.
    """
    model = nnx.merge(graphdef, params)
    targets = seq[:, start + 1:]
    chunk = model.config.logits_chunk
    if not chunk:
        logits = forward(graphdef, params, seq, seq_mask)[:, start:-1] / temperature
        return (token_log_probs(logits, targets),
                token_entropies(logits) if with_entropy else None)
    hidden, _ = model.model(seq, positions_from_mask(seq_mask), seq_mask)
    head_graphdef, head_params = nnx.split(model.head)
    head = lambda p, h: head_logits(nnx.merge(head_graphdef, p), h)  # noqa: E731
    return chunked_token_stats(head, head_params, hidden[:, start:-1], targets, chunk,
                               temperature, with_entropy)


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[batch, seq, ...] -> [n, batch, chunk, ...], zero-padded to ``n * chunk`` positions."""
    n = -(-x.shape[1] // chunk)
    x = jnp.pad(x, [(0, 0), (0, n * chunk - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(x.shape[0], n, chunk, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x: jax.Array, length: int) -> jax.Array:
    """Inverse of ``_chunks``: [n, batch, chunk, ...] -> [batch, length, ...]."""
    x = x.swapaxes(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _chunk_stats(head, head_params, hidden, targets, temperature, with_entropy):
    logits = head(head_params, hidden) / temperature                  # [batch, chunk, vocab]
    return (token_log_probs(logits, targets),
            token_entropies(logits) if with_entropy else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5, 6))
def chunked_token_stats(head: Callable, head_params, hidden: jax.Array, targets: jax.Array,
                        chunk: int, temperature: float = 1.0, with_entropy: bool = False
                        ) -> tuple[jax.Array, jax.Array | None]:
    """``token_log_probs`` and (``with_entropy``, else None) ``token_entropies`` of
    ``head(head_params, hidden) / temperature``, ``chunk`` positions at a time, so that
    neither pass holds more than one [batch, chunk, vocab] block of logits: the forward pass is a ``lax.scan`` over chunks,
    and the backward pass (a custom VJP) recomputes each block's logits, returns the hidden
    states' gradient chunk by chunk and sums the head's over chunks — the gradient of the
    unchunked computation, up to the order of that sum.

    head: (params, [..., d_model]) -> fp32 logits [..., vocab]; hidden: [batch, seq,
    d_model]; targets: [batch, seq] -> [batch, seq] arrays.
    """
    stats = lambda h, t: _chunk_stats(head, head_params, h, t, temperature,  # noqa: E731
                                      with_entropy)
    _, out = jax.lax.scan(lambda c, x: (c, stats(*x)), None,
                          (_chunks(hidden, chunk), _chunks(targets, chunk)))
    return jax.tree.map(lambda x: _unchunk(x, hidden.shape[1]), out)


def _chunked_forward(head, head_params, hidden, targets, chunk, temperature, with_entropy):
    out = chunked_token_stats(head, head_params, hidden, targets, chunk, temperature,
                              with_entropy)
    return out, (head_params, hidden, targets)


def _chunked_backward(head, chunk, temperature, with_entropy, residuals, cotangents):
    head_params, hidden, targets = residuals

    def body(head_grad, x):
        h, t, g = x
        _, vjp = jax.vjp(lambda p, hh: _chunk_stats(head, p, hh, t, temperature,
                                                    with_entropy), head_params, h)
        g_params, g_hidden = vjp(g)
        return jax.tree.map(jnp.add, head_grad, g_params), g_hidden

    zeros = jax.tree.map(jnp.zeros_like, head_params)
    xs = (_chunks(hidden, chunk), _chunks(targets, chunk),
          jax.tree.map(lambda g: _chunks(g, chunk), cotangents))
    head_grad, hidden_grad = jax.lax.scan(body, zeros, xs)
    return head_grad, _unchunk(hidden_grad, hidden.shape[1]), None


chunked_token_stats.defvjp(_chunked_forward, _chunked_backward)


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

    ids, mask: [batch, seq]; prompt_length: [batch]. Position t predicts ``ids[:, t + 1]``,
    counted where the target is a response token (chunked like every log-prob here).
    """
    logp, _ = predicted_token_stats(graphdef, params, ids, mask)         # [batch, seq - 1]
    targets = response_token_mask(mask, prompt_length)[:, 1:].astype(jnp.float32)
    return (logp * targets).sum(-1), targets.sum(-1)
