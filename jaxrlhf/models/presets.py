"""Architectures of open models by name, as ``ModelConfig`` fields (random init by default;
a run's ``model_init=DIR`` loads a local HF checkpoint of the same shape instead).

Each is the shape of the published checkpoint's ``config.json`` (``tests/test_presets.py``
reads those configs through the HF importer and counts the parameters). Experiment configs
at these sizes are ``configs/presets/<name>.py`` (``jaxrlhf.config.preset_config``).
"""
from __future__ import annotations

from typing import Any

from jaxrlhf.errors import ConfigError
from jaxrlhf.models.config import ModelConfig

_LLAMA3 = dict(family="llama", vocab_size=128256, n_kv_heads=8, norm_eps=1e-5,
               rope_theta=500000.0, qkv_bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 small (Radford et al. 2019): 124M parameters
    "gpt2_124m": dict(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                      n_kv_heads=12, d_ff=3072, max_seq_len=1024, tie_embeddings=True,
                      qkv_bias=True, norm_eps=1e-5),
    # Qwen2.5-0.5B: 494M parameters, grouped-query attention with 2 KV heads
    "qwen2_5_0_5b": dict(family="qwen2", vocab_size=151936, d_model=896, n_layers=24,
                         n_heads=14, n_kv_heads=2, d_ff=4864, max_seq_len=32768,
                         tie_embeddings=True, qkv_bias=True, norm_eps=1e-6,
                         rope_theta=1000000.0),
    # Llama-3.2-1B: 1.24B parameters, llama3 RoPE scaling to a 131072-token context
    "llama3_2_1b": dict(_LLAMA3, d_model=2048, n_layers=16, n_heads=32, d_ff=8192,
                        max_seq_len=131072, tie_embeddings=True, rope_type="llama3",
                        rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                        rope_original_max_len=8192),
    # Llama-3-8B: 8.03B parameters
    "llama3_8b": dict(_LLAMA3, d_model=4096, n_layers=32, n_heads=32, d_ff=14336,
                      max_seq_len=8192, tie_embeddings=False),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` of preset ``name`` with ``overrides`` (dtypes, remat, ...)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; the presets are {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides}).validate()

