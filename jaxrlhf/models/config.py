"""Model configuration for the decoder-only transformer (GPT-2 / Llama / Qwen2 families).

The one place for the model families, compute/parameter dtypes and remat policies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FAMILIES = ("gpt2", "llama", "qwen2")
REMAT_POLICIES = ("none", "full", "dots_saveable")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one decoder-only transformer."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_seq_len: int
    tie_embeddings: bool
    qkv_bias: bool
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"

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

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Build from a HF config.json dict (GPT2Config, LlamaConfig, Qwen2Config)."""
        mt = d.get("model_type")
        if mt == "gpt2":
            dm = d["n_embd"]
            kw = dict(family="gpt2", vocab_size=d["vocab_size"], d_model=dm, n_layers=d["n_layer"],
                      n_heads=d["n_head"], n_kv_heads=d["n_head"], d_ff=d.get("n_inner") or 4 * dm,
                      max_seq_len=d["n_positions"], norm_eps=d.get("layer_norm_epsilon", 1e-5),
                      tie_embeddings=d.get("tie_word_embeddings", True), qkv_bias=True)
        elif mt in ("llama", "qwen2"):
            rope = d.get("rope_parameters") or {}
            theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
            nh = d["num_attention_heads"]
            kw = dict(family=mt, vocab_size=d["vocab_size"], d_model=d["hidden_size"],
                      n_layers=d["num_hidden_layers"], n_heads=nh,
                      n_kv_heads=d.get("num_key_value_heads") or nh, d_ff=d["intermediate_size"],
                      max_seq_len=d["max_position_embeddings"], norm_eps=d.get("rms_norm_eps", 1e-6),
                      rope_theta=float(theta), tie_embeddings=d.get("tie_word_embeddings", False),
                      qkv_bias=(mt == "qwen2") or bool(d.get("attention_bias", False)))
        else:
            raise ValueError(f"config.json model_type={mt!r} is not supported (gpt2, llama, qwen2)")
        kw.update(overrides)
        return cls(**kw).validate()

    def to_hf_dict(self) -> dict[str, Any]:
        """HF config.json dict for this model."""
        if self.family == "gpt2":
            return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=self.vocab_size,
                        n_embd=self.d_model, n_layer=self.n_layers, n_head=self.n_heads,
                        n_positions=self.max_seq_len, n_inner=self.d_ff, layer_norm_epsilon=self.norm_eps,
                        activation_function="gelu_new", tie_word_embeddings=self.tie_embeddings,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        arch = "LlamaForCausalLM" if self.family == "llama" else "Qwen2ForCausalLM"
        d = dict(model_type=self.family, architectures=[arch], vocab_size=self.vocab_size,
                 hidden_size=self.d_model, intermediate_size=self.d_ff, num_hidden_layers=self.n_layers,
                 num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                 max_position_embeddings=self.max_seq_len, rms_norm_eps=self.norm_eps,
                 rope_theta=self.rope_theta,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
                 tie_word_embeddings=self.tie_embeddings, hidden_act="silu")
        if self.family == "llama":
            d.update(attention_bias=self.qkv_bias, mlp_bias=False, head_dim=self.head_dim)
        return d
