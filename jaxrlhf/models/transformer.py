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
  It is created with ``nnx.vmap`` and applied with ``jax.lax.scan`` over the stacked state (and
  over the KV cache's leading layer axis), so compile time does not grow with depth.
``remat`` ('full' | 'dots_saveable') wraps each block application (inside the scan when scanned).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.lora import LoRAConfig

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


def rope(x, positions, theta):
    """x [B,T,H,Dh], positions [B,T] -> rotated (HF rotate_half convention)."""
    dh = x.shape[-1]
    inv = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    ang = positions[..., None].astype(jnp.float32) * inv  # [B,T,Dh/2]
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

    def __call__(self, x, positions, bias, ck, cv, index):
        """x [B,T,D]; bias [B,1,T,S]; ck/cv [B,S,K,Dh] or None."""
        cfg = self.config
        B, T, _ = x.shape
        h = self.ln1(x)
        q = self.q(h).reshape(B, T, cfg.n_heads, cfg.head_dim)
        k = self.k(h).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
        v = self.v(h).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
        if cfg.family != "gpt2":
            q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if ck is not None:
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
            k, v = ck.astype(q.dtype), cv.astype(q.dtype)
        rep = cfg.n_heads // cfg.n_kv_heads
        k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / jnp.sqrt(cfg.head_dim) + bias
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        a = jnp.einsum("bhts,bshd->bthd", p, v).reshape(B, T, -1)
        x = x + self.o(a)
        h = self.ln2(x)
        if cfg.family == "gpt2":
            m = jax.nn.gelu(self.up(h), approximate=True)
        else:
            m = jax.nn.silu(self.gate(h)) * self.up(h)
        return x + self.down(m), ck, cv


def _remat(cfg: ModelConfig, f, checkpoint):
    """``f`` wrapped by ``checkpoint`` (``nnx.remat`` / ``jax.checkpoint``) per ``cfg.remat``."""
    if cfg.remat == "none":
        return f
    pol = None if cfg.remat == "full" else jax.checkpoint_policies.dots_saveable
    return checkpoint(f, policy=pol)


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
        B, T = input_ids.shape
        x = self.embed(input_ids)
        if self.config.family == "gpt2":
            x = x + self.pos(positions)
        mask = attention_mask.astype(bool)
        if cache is None:
            idx = jnp.zeros((), jnp.int32)
            kpos = jnp.arange(T)
        else:
            idx = cache.index
            kpos = jnp.arange(mask.shape[1])
        qpos = idx + jnp.arange(T)
        ok = (kpos[None, :] <= qpos[:, None])[None] & mask[:, None, :]  # [B,T,S]
        bias = jnp.where(ok, 0.0, NEG)[:, None].astype(jnp.float32)
        ck = None if cache is None else cache.k
        cv = None if cache is None else cache.v
        if self.config.scan_layers:
            x, ck, cv = self._scan_blocks(x, positions, bias, ck, cv, idx)
        else:
            ks, vs = [], []
            for i, blk in enumerate(self.blocks):
                x, k_i, v_i = _remat(self.config, lambda b, *a: b(*a), nnx.remat)(
                    blk, x, positions, bias, None if ck is None else ck[i], None if cv is None else cv[i], idx)
                ks.append(k_i); vs.append(v_i)
            if cache is not None:
                ck, cv = jnp.stack(ks), jnp.stack(vs)
        x = self.ln_f(x)
        new = None if cache is None else KVCache(ck, cv, idx + T)
        return x, new

    def _scan_blocks(self, x, positions, bias, ck, cv, idx):
        """Run the stacked blocks with ``lax.scan``; ck/cv [L,B,S,K,Dh] or None."""
        graphdef, state = nnx.split(self.blocks)

        def body(h, xs):
            layer_state, k_l, v_l = xs
            h, k_l, v_l = nnx.merge(graphdef, layer_state)(h, positions, bias, k_l, v_l, idx)
            return h, (k_l, v_l)

        body = _remat(self.config, body, functools.partial(jax.checkpoint, prevent_cse=False))
        x, (ck, cv) = jax.lax.scan(body, x, (state, ck, cv))
        return x, ck, cv


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
        if self.config.tie_embeddings:
            logits = self.model.embed.attend(h)
        else:
            logits = self.lm_head(h)
        return logits.astype(jnp.float32), cache


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
