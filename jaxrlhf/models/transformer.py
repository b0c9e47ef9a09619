"""Decoder-only transformer (GPT-2 / Llama / Qwen2) in Flax NNX, with a KV cache.

Every parameter carries logical axis names ('embed','mlp','heads','kv','vocab') and is
created unsharded (``eager_sharding=False`` in its metadata): placement on a mesh is done by
``jaxrlhf.parallel`` from those names, so building a model needs no mesh and changes no
process-wide setting.

Layer stack layouts:
- ``scan_layers=False``: ``model.blocks`` is an ``nnx.List`` of ``Block``; ``model.blocks[i].q.kernel``
  is [D, H*Dh]. Layers run in a Python loop (unrolled under jit).
- ``scan_layers=True``: ``model.blocks`` is ONE ``Block`` whose every parameter has a leading
  layer axis (logical name ``'layers'`` first), e.g. ``model.blocks.q.kernel`` is [L, D, H*Dh].
  It is created with ``nnx.vmap`` and applied with ``jax.lax.scan`` over the stacked state, so
  compile time does not grow with depth.
Without a cache the attention mask may hold segment ids (packed pretraining rows, one id per
document): a query then attends only to the causal keys of its own segment
(:func:`same_segment`); a 0/1 mask is one segment, so it means what it always meant.
The KV cache ([L, B, S, Hkv, Dh], in the compute dtype) is updated in place: each block writes
only its new tokens' slots (``dynamic_update_slice``) and reads its layer for attention.
``remat`` ('full' or a ``jax.checkpoint_policies`` name, ``models.config.REMAT_POLICIES``) wraps
each block application (inside the scan when scanned) in training passes.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.parallel import constrain_batch

NEG = -1e9  # finite mask value so fully padded rows do not NaN


class KVCache(NamedTuple):
    k: jax.Array      # [L, B, S, Hkv, Dh]
    v: jax.Array      # [L, B, S, Hkv, Dh]
    index: jax.Array  # int32 scalar: next slot to write


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def _named(init, names):
    """``init`` whose parameter carries the logical axis ``names``, placed later by name."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def _dense(cfg, din, dout, names, rngs, bias, name: str = "", lora: LoRAConfig | None = None):
    """A linear layer; a LoRA one when ``lora`` targets its ``name`` (models/lora.py)."""
    kwargs = dict(use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=_named(nnx.initializers.normal(0.02), names),
                  bias_init=_named(nnx.initializers.zeros, (names[1],)), rngs=rngs)
    if lora is not None and lora.applies_to(name):
        return lora_lib.linear(lora, din, dout, names, compute_dtype=cfg.dtype, **kwargs)
    return nnx.Linear(din, dout, **kwargs)


def _norm(cfg, rngs):
    kw = dict(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
              scale_init=_named(nnx.initializers.ones, ("embed",)))
    if cfg.family == "gpt2":
        return nnx.LayerNorm(cfg.d_model, bias_init=_named(nnx.initializers.zeros, ("embed",)), **kw)
    return nnx.RMSNorm(cfg.d_model, **kw)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """RoPE inverse frequencies [head_dim / 2] (Su et al. 2021), rescaled by ``cfg.rope_type``.

    'linear' divides every frequency by ``rope_factor`` (position interpolation, Chen et al.
    2023). 'llama3' (Llama 3.1) divides the low frequencies — wavelength above
    ``rope_original_max_len / rope_low_freq_factor`` — by ``rope_factor``, keeps those with
    wavelength below ``rope_original_max_len / rope_high_freq_factor``, and interpolates
    between, as transformers' ``_compute_llama3_parameters`` does.
    """
    dh = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":
        factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        original = cfg.rope_original_max_len
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > original / low, inv / factor, inv)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        return jnp.where(medium, smoothed, scaled)
    return inv


def rope(x, positions, inv_freq):
    """x [B,T,H,Dh], positions [B,T], inv_freq [Dh/2] -> rotated (HF rotate_half convention)."""
    ang = positions[..., None].astype(jnp.float32) * inv_freq  # [B,T,Dh/2]
    ang = jnp.concatenate([ang, ang], -1)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * jnp.cos(ang) + rot * jnp.sin(ang)).astype(x.dtype)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
        self.config = cfg
        D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        gb = cfg.family == "gpt2"
        dense = functools.partial(_dense, cfg, rngs=rngs, lora=lora)
        self.ln1, self.ln2 = _norm(cfg, rngs), _norm(cfg, rngs)
        self.q = dense(D, H * Dh, ("embed", "heads"), bias=cfg.qkv_bias, name="q")
        self.k = dense(D, K * Dh, ("embed", "kv"), bias=cfg.qkv_bias, name="k")
        self.v = dense(D, K * Dh, ("embed", "kv"), bias=cfg.qkv_bias, name="v")
        self.o = dense(H * Dh, D, ("heads", "embed"), bias=gb, name="o")
        self.up = dense(D, cfg.d_ff, ("embed", "mlp"), bias=gb, name="up")
        if not gb:
            self.gate = dense(D, cfg.d_ff, ("embed", "mlp"), bias=False, name="gate")
        self.down = dense(cfg.d_ff, D, ("mlp", "embed"), bias=gb, name="down")

    def __call__(self, x, positions, bias, cache, layer, index):
        """x [B,T,D]; bias [B,1,T,S]; cache: the (k, v) of every layer [L,B,S,K,Dh], or None.

        With a cache, this block writes its keys and values for the T new tokens in place at
        slots ``index ..`` of layer ``layer`` and attends over that layer's cache. Returns the
        new x and cache.
        """
        cfg = self.config
        B, T, _ = x.shape
        h = self.ln1(x)
        q = self.q(h).reshape(B, T, cfg.n_heads, cfg.head_dim)
        k = self.k(h).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
        v = self.v(h).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
        if cfg.family != "gpt2":
            inv_freq = rope_frequencies(cfg)
            q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        if cache is not None:
            cache = tuple(jax.lax.dynamic_update_slice(c, new[None].astype(c.dtype),
                                                       (layer, 0, index, 0, 0))
                          for c, new in zip(cache, (k, v)))
            k, v = (jax.lax.dynamic_index_in_dim(c, layer, 0, keepdims=False).astype(q.dtype)
                    for c in cache)
        x = constrain_batch(x + self.o(attention(q, k, v, bias).reshape(B, T, -1)))
        h = self.ln2(x)
        if cfg.family == "gpt2":
            m = jax.nn.gelu(self.up(h), approximate=True)
        else:
            m = jax.nn.silu(self.gate(h)) * self.up(h)
        return constrain_batch(x + self.down(m)), cache


def attention(q, k, v, bias):
    """Causal grouped-query attention without repeating keys and values: query head ``h``
    reads key/value head ``h // (H / K)`` (HF's ``repeat_kv`` order), so decoding reads the
    cache once. Scores and softmax in fp32. q [B,T,H,Dh]; k, v [B,S,K,Dh]; bias [B,1,T,S]
    (0 or NEG) -> [B,T,H,Dh]."""
    B, T, H, Dh = q.shape
    K = k.shape[2]
    if K == H:   # multi-head: the plain contraction (the grouped one sums in another order)
        s = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / jnp.sqrt(Dh) + bias
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        return jnp.einsum("bhts,bshd->bthd", p, v)
    q = q.reshape(B, T, K, H // K, Dh)
    s = jnp.einsum("btkrd,bskd->bkrts", q, k).astype(jnp.float32) / jnp.sqrt(Dh) + bias[:, :, None]
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkrts,bskd->btkrd", p, v).reshape(B, T, H, Dh)


def same_segment(segment_ids: jax.Array) -> jax.Array:
    """The keys each query's segment lets it read, [B,T,T] bool: those of the same segment
    id, and every key for a padding query (segment 0), as under a 0/1 mask (a padding
    query's output is never used). With a 0/1 mask a real query may read every real key,
    so this changes nothing there.

    segment_ids: [B,T] (0 = padding, else the segment, e.g. the document of a packed row).
    """
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    return (q == k) | (q == 0)


def _remat(cfg: ModelConfig, f, checkpoint, cache):
    """``f`` wrapped by ``checkpoint`` (``nnx.remat`` / ``jax.checkpoint``) per ``cfg.remat``;
    never with a KV cache (decoding takes no gradient, and its loop merges the model outside
    the block's trace)."""
    if cfg.remat == "none" or cache is not None:
        return f
    policy = None if cfg.remat == "full" else getattr(jax.checkpoint_policies, cfg.remat)
    return checkpoint(f, policy=policy)


class Transformer(nnx.Module):
    """Embeddings, blocks, final norm; ``lora`` puts adapters on the blocks' linear layers
    it targets."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
        cfg.validate()
        self.config = cfg
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                               embedding_init=_named(init, ("vocab", "embed")), rngs=rngs)
        if cfg.family == "gpt2":
            self.pos = nnx.Embed(cfg.max_seq_len, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 embedding_init=_named(init, (None, "embed")), rngs=rngs)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(r):
                return Block(cfg, rngs=r, lora=lora)
            self.blocks = make(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs, lora=lora) for _ in range(cfg.n_layers)])
        self.ln_f = _norm(cfg, rngs)

    def __call__(self, input_ids, positions, attention_mask, cache: KVCache | None = None):
        """Final hidden states [B,T,D] and the updated cache (None without one).

        input_ids, positions: [B,T]. attention_mask: [B,T] without a cache, 0 on padding and
        else a segment id: a 0/1 mask is one segment, and packed rows (jaxrlhf.data.packing)
        number their documents so that a query reads only the earlier keys of its own
        segment. With a cache, attention_mask [B,S] covers the cache slots and is read as
        0/1 (nonzero = a real key).
        """
        B, T = input_ids.shape
        x = self.embed(input_ids)
        if self.config.family == "gpt2":
            x = x + self.pos(positions)
        x = constrain_batch(x)
        mask = attention_mask.astype(bool)
        if cache is None:
            idx = jnp.zeros((), jnp.int32)
            kpos = jnp.arange(T)
        else:
            idx = cache.index
            kpos = jnp.arange(mask.shape[1])
        qpos = idx + jnp.arange(T)
        ok = (kpos[None, :] <= qpos[:, None])[None] & mask[:, None, :]  # [B,T,S]
        if cache is None:
            ok = ok & same_segment(attention_mask)
        bias = jnp.where(ok, 0.0, NEG)[:, None].astype(jnp.float32)
        kv = None if cache is None else (cache.k, cache.v)
        if self.config.scan_layers:
            x, kv = self._scan_blocks(x, positions, bias, kv, idx)
        else:
            for i, blk in enumerate(self.blocks):
                x, kv = _remat(self.config, lambda b, *a: b(*a), nnx.remat, kv)(
                    blk, x, positions, bias, kv, i, idx)
        x = self.ln_f(x)
        new = None if cache is None else KVCache(kv[0], kv[1], idx + T)
        return x, new

    def _scan_blocks(self, x, positions, bias, kv, idx):
        """Run the stacked blocks with ``lax.scan``; the cache ``kv`` ([L,B,S,K,Dh] pairs or
        None) is carried and updated in place, one layer per scan step."""
        graphdef, state = nnx.split(self.blocks)

        def body(carry, xs):
            h, kv = carry
            layer_state, layer = xs
            h, kv = nnx.merge(graphdef, layer_state)(h, positions, bias, kv, layer, idx)
            return (h, kv), None

        body = _remat(self.config, body, functools.partial(jax.checkpoint, prevent_cse=False),
                      kv)
        layers = jnp.arange(self.config.n_layers, dtype=jnp.int32)
        (x, kv), _ = jax.lax.scan(body, (x, kv), (state, layers))
        return x, kv


class CausalLM(nnx.Module):
    """Transformer + LM head (tied to the embedding or a separate ``lm_head``); fp32 logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoRAConfig | None = None):
        self.config = cfg
        self.model = Transformer(cfg, rngs=rngs, lora=lora)
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"), rngs,
                                  False, name="lm_head", lora=lora)

    def __call__(self, input_ids, positions, attention_mask, cache=None):
        h, cache = self.model(input_ids, positions, attention_mask, cache)
        return self.logits(h), cache

    @property
    def head(self) -> nnx.Module:
        """The module that maps hidden states to logits: the tied embedding or ``lm_head``."""
        return self.model.embed if self.config.tie_embeddings else self.lm_head

    def logits(self, h):
        """fp32 logits [..., vocab] of final hidden states h [..., d_model]."""
        return head_logits(self.head, h)


def head_logits(head: nnx.Module, h: jax.Array) -> jax.Array:
    """fp32 logits of hidden states ``h`` under an LM head: a tied ``nnx.Embed`` (its
    ``attend``) or a ``Linear``."""
    out = head.attend(h) if isinstance(head, nnx.Embed) else head(h)
    return out.astype(jnp.float32)


class ScalarModel(nnx.Module):
    """Trunk + Linear(D->1). 'normal': N(0, 1/sqrt(d_model+1)) (Huang et al. 2023, "N implementation
    details of RLHF"; lm-human-preferences reward head); 'zeros': value head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, head_init: str = "normal",
                 lora: LoRAConfig | None = None):
        self.config = cfg
        self.model = Transformer(cfg, rngs=rngs, lora=lora)
        if head_init not in ("normal", "zeros"):
            raise ValueError(f"head_init={head_init!r} must be 'normal' or 'zeros'")
        kinit = nnx.initializers.normal(1.0 / (cfg.d_model + 1) ** 0.5) if head_init == "normal" else nnx.initializers.zeros
        self.head = nnx.Linear(cfg.d_model, 1, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                               kernel_init=_named(kinit, ("embed", None)),
                               bias_init=_named(nnx.initializers.zeros, (None,)))

    def __call__(self, input_ids, positions, attention_mask, cache=None):
        h, cache = self.model(input_ids, positions, attention_mask, cache)
        return self.head(h)[..., 0].astype(jnp.float32), cache
