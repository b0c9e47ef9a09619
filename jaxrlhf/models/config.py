"""Model configuration for the decoder-only transformer (GPT-2 / Llama / Qwen2 families).

The one place for the model families, compute/parameter dtypes and remat policies.
"""
from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("gpt2", "llama", "qwen2")
# Activation checkpointing per block: none; "full" (recompute the block); or save the
# outputs of its matmuls and recompute the rest — every dot ("dots_saveable"), or only those
# without batch dimensions, the weight matmuls, recomputing the attention scores
# ("dots_with_no_batch_dims_saveable", the usual choice for long sequences). The names are
# those of jax.checkpoint_policies.
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")
# RoPE frequency schedules, named as HF's ``rope_type`` (``jaxrlhf.models.transformer.rope_frequencies``).
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one decoder-only transformer."""

    # The defaults are a CPU-sized GPT-2; vocab_size 0: the tokenizer's size
    # (models.build.resolve_config).
    family: str = "gpt2"
    vocab_size: int = 0
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    d_ff: int = 256
    max_seq_len: int = 64
    tie_embeddings: bool = True
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    # RoPE scaling (Llama 3.1/3.2 "llama3", position interpolation "linear"): HF's
    # rope_parameters ``factor``, ``low_freq_factor``, ``high_freq_factor`` and
    # ``original_max_position_embeddings``.
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # > 0: log-probs and the LM loss are computed over chunks of this many positions from
    # the final hidden states, never holding [batch, seq, vocab] logits (jaxrlhf.scoring).
    logits_chunk: int = 0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def compute_dtype(self):
        """jnp dtype of activations (from ``dtype``)."""
        import jax.numpy as jnp
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes).validate()

    def validate(self, *, vocab_known: bool = True) -> "ModelConfig":
        """Raise ValueError naming the offending ``model.<field>``; return self.

        ``vocab_known=False`` accepts ``vocab_size=0``, which a run config uses for "the
        tokenizer's size" until the tokenizer is known (``models.build.resolve_config``).
        """
        def bad(msg: str) -> None:
            raise ValueError(msg)
        if self.family not in FAMILIES:
            bad(f"model.family={self.family!r} is not a known model family; choose from {FAMILIES}")
        if self.vocab_size < 0 or (vocab_known and self.vocab_size == 0):
            bad(f"model.vocab_size={self.vocab_size} must be positive"
                + ("" if vocab_known else " (or 0: the tokenizer's size)"))
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                bad(f"model.{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            bad(f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads:
            bad(f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}")
        if self.family == "gpt2" and self.n_kv_heads != self.n_heads:
            bad(f"model.n_kv_heads={self.n_kv_heads} must equal model.n_heads={self.n_heads} for gpt2")
        if self.family != "gpt2" and self.head_dim % 2:
            bad(f"model.d_model/model.n_heads={self.head_dim} must be even for RoPE")
        if self.norm_eps <= 0:
            bad(f"model.norm_eps={self.norm_eps} must be > 0")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                bad(f"model.{name}={getattr(self, name)!r} must be one of {DTYPES}")
        if self.remat not in REMAT_POLICIES:
            bad(f"model.remat={self.remat!r} must be one of {REMAT_POLICIES}")
        if self.rope_type not in ROPE_TYPES:
            bad(f"model.rope_type={self.rope_type!r} must be one of {ROPE_TYPES}")
        if self.rope_type != "default" and self.family == "gpt2":
            bad(f"model.rope_type={self.rope_type!r} needs a RoPE family (llama, qwen2), not gpt2")
        if self.rope_factor <= 0:
            bad(f"model.rope_factor={self.rope_factor} must be > 0")
        if self.rope_type == "llama3" and not (
                0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
            bad(f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be > 0 and below "
                f"model.rope_high_freq_factor={self.rope_high_freq_factor}")
        if self.rope_original_max_len <= 0:
            bad(f"model.rope_original_max_len={self.rope_original_max_len} must be positive")
        if self.logits_chunk < 0:
            bad(f"model.logits_chunk={self.logits_chunk} must be >= 0 (0: no chunking)")
        return self

    @classmethod
    def preset(cls, family: str, **overrides: Any) -> "ModelConfig":
        """Tiny family defaults (override any field)."""
        base: dict[str, Any] = dict(
            family=family, vocab_size=256, d_model=64, n_layers=2, n_heads=4,
            n_kv_heads=4, d_ff=256, max_seq_len=128)
        if family == "gpt2":
            base.update(tie_embeddings=True, qkv_bias=True, norm_eps=1e-5)
        elif family in ("llama", "qwen2"):
            base.update(n_kv_heads=2, d_ff=172, tie_embeddings=False,
                        qkv_bias=(family == "qwen2"), norm_eps=1e-6)
        else:
            raise ValueError(f"model.family={family!r} must be one of {FAMILIES}")
        base.update(overrides)
        return cls(**base).validate()
