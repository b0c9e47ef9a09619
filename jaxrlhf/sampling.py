"""Jitted generation with a KV cache: one batched prefill of the prompts (logits of their last
position only), then a ``lax.scan`` decode loop that feeds one token per step and writes its
keys and values in place into the cache (compute dtype), never recomputing the prompt.

Prompts arrive left-padded with their mask; position ids are ``cumsum(mask) - mask``
(docs/design.md, PPO detail 2). The response length is fixed per call; tokens after the
first EOS are padding and masked (detail 4). Log-probabilities are those of
``logits / temperature``, the distribution that sampled (detail 3; Huang et al. 2023, "The N
Implementation Details of RLHF with PPO", §"Generate with temperature"). :func:`complete`
is the text-in, text-out form for trained models.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.data.tokenizer import decode_rows, encode_prompts
from jaxrlhf.models.transformer import init_cache
from jaxrlhf.scoring import positions_from_mask

NEG_INF = -1e9


class Completion(NamedTuple):
    tokens: jax.Array     # [batch, new_tokens] int32, pad after the first EOS
    mask: jax.Array       # [batch, new_tokens] int32, 1 up to and including the first EOS
    logprobs: jax.Array   # [batch, new_tokens] float32, log p(token) under logits / temperature


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest logits per row (k = 0 keeps all). logits: [batch, vocab]."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_mask(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probability reaches ``p`` (p = 1 keeps all). logits: [batch, vocab]."""
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < p                      # the top token is always kept
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, NEG_INF)


def sample_token(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                 top_p: float, greedy: bool) -> tuple[jax.Array, jax.Array]:
    """Draw one token per row; return it and its log-prob under ``logits / temperature``."""
    scaled = logits.astype(jnp.float32) / (1.0 if greedy else temperature)
    if greedy:
        token = jnp.argmax(scaled, axis=-1)
    else:
        filtered = top_p_mask(top_k_mask(scaled, top_k), top_p)
        token = jax.random.categorical(rng, filtered, axis=-1)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None], -1)[:, 0]
    return token.astype(jnp.int32), logprob


def generate(graphdef: nnx.GraphDef, params: nnx.State, prompt_ids: jax.Array,
             prompt_mask: jax.Array, rng: jax.Array, *, max_new_tokens: int, eos_id: int,
             pad_id: int, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False) -> Completion:
    """Sample ``max_new_tokens`` tokens after left-padded prompts. Pure; jit it with the
    keyword arguments static (``jax.jit(partial(generate, graphdef, max_new_tokens=...))``).

    prompt_ids, prompt_mask: [batch, prompt_len]. The cache holds prompt_len + max_new_tokens
    slots; slot ``prompt_len + t`` holds the t-th new token.
    """
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_ids.shape
    total = prompt_len + max_new_tokens
    cache = init_cache(model.config, batch, total, model.config.compute_dtype)
    key_mask = jnp.concatenate(
        [prompt_mask.astype(jnp.int32), jnp.zeros((batch, max_new_tokens), jnp.int32)], axis=1)
    hidden, cache = model.model(prompt_ids, positions_from_mask(prompt_mask), key_mask, cache)
    logits = model.logits(hidden[:, -1])     # [batch, vocab]: only the last prompt position
    next_position = prompt_mask.astype(jnp.int32).sum(-1)         # [batch]
    sample = lambda lg, key: sample_token(lg, key, temperature=temperature, top_k=top_k,
                                          top_p=top_p, greedy=greedy)

    def step(carry, key):
        logits, cache, key_mask, position, done, t = carry
        token, logprob = sample(logits, key)
        token = jnp.where(done, pad_id, token)
        valid = (~done).astype(jnp.int32)
        done = done | (token == eos_id)
        key_mask = key_mask.at[:, prompt_len + t].set(1)
        new_logits, cache = model(token[:, None], position[:, None], key_mask, cache=cache)
        carry = (new_logits[:, -1], cache, key_mask, position + 1, done, t + 1)
        return carry, (token, valid, logprob * valid)

    carry = (logits, cache, key_mask, next_position, jnp.zeros((batch,), bool),
             jnp.int32(0))
    _, (tokens, mask, logprobs) = jax.lax.scan(step, carry, jax.random.split(rng, max_new_tokens))
    return Completion(tokens=tokens.T, mask=mask.T, logprobs=logprobs.T)


def complete(graphdef: nnx.GraphDef, params: nnx.State, tokenizer, prompts: Sequence[str], *,
             max_new_tokens: int, seed: int = 0, batch_size: int = 64,
             **sampling_kwargs) -> list[str]:
    """Complete text prompts with a causal LM (``generate``'s sampling options), in batches
    of ``batch_size`` left-padded to the longest prompt; batch ``i`` uses key ``seed + i *
    batch_size``."""
    generate_fn = jax.jit(functools.partial(
        generate, graphdef, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, **sampling_kwargs))
    ids, mask = encode_prompts(tokenizer, prompts)          # [n, longest prompt]
    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, start + batch_size)
        out = generate_fn(params, ids[rows], mask[rows], jax.random.key(seed + start))
        responses += decode_rows(tokenizer, out.tokens, out.mask)
    return responses
