"""HF ``config.json`` <-> ``ModelConfig``: the fields the importer reads, the values it checks,
the fields that cannot change the computation — and a refusal, by name, of everything else.

A checkpoint loaded with an ignored field that changes the model gives silently wrong logits
(GPT-2 ``activation_function=relu``, Llama ``hidden_act=gelu``, Qwen2 ``use_sliding_window``),
so every field of a family's ``config.json`` is in exactly one of three tables:

- ``READ``: mapped into ``ModelConfig`` (sizes, epsilon, RoPE and its scaling, tying, biases);
- ``REQUIRED``: fields whose value must be the one this model computes (``hidden_act='silu'``);
- ``NO_EFFECT``: metadata, generation defaults, dropout rates (jaxrlhf never applies dropout,
  docs/design.md PPO detail 14) and options that change only how the same numbers are formed.

A field in none of them is refused: an unknown option is treated as one that changes the
model. ``tests/test_hf_config.py`` checks the tables against transformers' own config
classes, and that every ``NO_EFFECT`` field really leaves transformers' logits unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jaxrlhf.errors import UnsupportedModelError
from jaxrlhf.models.config import ModelConfig

# Fields of every transformers config that never reach the forward pass.
GENERIC_NO_EFFECT = frozenset({
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "id2label",
    "label2id", "num_labels", "problem_type", "return_dict", "output_attentions",
    "output_hidden_states", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "initializer_range", "torchscript",
    "use_bfloat16", "tokenizer_class", "prefix", "finetuning_task", "task_specific_params",
    "is_decoder", "tf_legacy_loss", "use_return_dict", "tie_encoder_decoder",
    "cross_attention_hidden_size",
    # feed-forward evaluated in sequence chunks: the same numbers
    "chunk_size_feed_forward",
    # generation defaults (transformers moves them to GenerationConfig)
    "assistant_confidence_threshold", "assistant_lookbehind", "bad_words_ids",
    "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "encoder_repetition_penalty", "epsilon_cutoff",
    "eta_cutoff", "exponential_decay_length_penalty", "forced_bos_token_id",
    "forced_eos_token_id", "length_penalty", "max_length", "min_length",
    "no_repeat_ngram_size", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_scores",
    "remove_invalid_values", "repetition_penalty", "return_dict_in_generate",
    "suppress_tokens", "target_lookbehind", "temperature", "top_k", "top_p", "typical_p",
})

NO_EFFECT: dict[str, frozenset[str]] = {
    # dropout (off at inference; jaxrlhf has none), GPT2DoubleHeadsModel's summary head,
    # and the legacy context size that duplicates n_positions
    "gpt2": frozenset({"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type",
                       "summary_use_proj", "summary_activation", "summary_proj_to_labels",
                       "summary_first_dropout", "n_ctx"}),
    # pretraining_tp splits the same matmuls into slices
    "llama": frozenset({"attention_dropout", "pretraining_tp"}),
    # the window is read only with use_sliding_window (required False)
    "qwen2": frozenset({"attention_dropout", "sliding_window", "max_window_layers"}),
}

_ROPE_READ = ("rope_theta", "rope_parameters", "rope_scaling", "original_max_position_embeddings")
_LLAMA_READ = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "max_position_embeddings",
               "rms_norm_eps", "tie_word_embeddings", *_ROPE_READ)
READ: dict[str, frozenset[str]] = {
    "gpt2": frozenset({"vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
                       "layer_norm_epsilon", "tie_word_embeddings"}),
    "llama": frozenset({*_LLAMA_READ, "attention_bias"}),
    "qwen2": frozenset(_LLAMA_READ),
}


def _head_dim_matches(value: Any, d: Mapping[str, Any]) -> bool:
    return value is None or value == d["hidden_size"] // d["num_attention_heads"]


def _is(*allowed: Any) -> Callable[[Any, Mapping[str, Any]], bool]:
    return lambda value, d: value in allowed


# {field: (accepts(value, config dict), what jaxrlhf computes)}
Requirement = tuple[Callable[[Any, Mapping[str, Any]], bool], str]
_GENERIC_REQUIRED: dict[str, Requirement] = {
    "is_encoder_decoder": (_is(False, None), "a decoder-only model"),
    "add_cross_attention": (_is(False, None), "no cross-attention"),
    "pruned_heads": (lambda v, d: not v, "every attention head (no pruned heads)"),
}
_ROPE_MODEL_REQUIRED: dict[str, Requirement] = {
    "hidden_act": (_is("silu"), "SwiGLU with 'silu'"),
    "head_dim": (_head_dim_matches, "head_dim = hidden_size / num_attention_heads"),
    "partial_rotary_factor": (_is(None, 1, 1.0), "RoPE on the whole head (factor 1.0)"),
}
REQUIRED: dict[str, dict[str, Requirement]] = {
    "gpt2": {**_GENERIC_REQUIRED,
             "activation_function": (_is("gelu_new", "gelu_pytorch_tanh"),
                                     "the tanh GELU ('gelu_new')"),
             "scale_attn_weights": (_is(True), "scores scaled by 1/sqrt(head_dim)"),
             "scale_attn_by_inverse_layer_idx": (_is(False), "no per-layer score scaling"),
             "reorder_and_upcast_attn": (_is(False), "the standard attention order")},
    "llama": {**_GENERIC_REQUIRED, **_ROPE_MODEL_REQUIRED,
              "mlp_bias": (_is(False), "MLP projections without bias")},
    "qwen2": {**_GENERIC_REQUIRED, **_ROPE_MODEL_REQUIRED,
              "use_sliding_window": (_is(False), "full causal attention in every layer"),
              "layer_types": (lambda v, d: v is None or all(t == "full_attention" for t in v),
                              "full causal attention in every layer")},
}

# Keys a RoPE parameter dict may hold, by rope_type (values checked in _rope_fields).
_ROPE_KEYS = {
    "default": {"rope_type", "type", "rope_theta", "partial_rotary_factor"},
    "linear": {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor"},
    "llama3": {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
               "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _refuse(field: str, value: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{field}={value!r} {why}; loading it would give wrong "
                      "logits, so the checkpoint is refused")


def check_supported(d: Mapping[str, Any]) -> str:
    """The family of a HF config dict, after checking that every field is one jaxrlhf reads,
    one whose value it implements, or one that cannot change the computation."""
    family = d.get("model_type")
    if family not in READ:
        raise UnsupportedModelError(f"model_type={family!r} is not supported "
                                    f"(supported: {', '.join(READ)})")
    required = REQUIRED[family]
    for field, value in d.items():
        if field.startswith("_") or field in READ[family] or field in GENERIC_NO_EFFECT \
                or field in NO_EFFECT[family]:
            continue
        if field in required:
            accepts, implemented = required[field]
            if not accepts(value, d):
                raise _refuse(field, value, f"is not implemented: jaxrlhf's {family} computes "
                              f"{implemented}")
            continue
        raise _refuse(field, value, f"is not a field jaxrlhf's {family} importer knows, so it "
                      "may change the computation (if it cannot, list it in "
                      "jaxrlhf/models/hf_config.py NO_EFFECT with the reason)")
    return family


def _rope_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """``ModelConfig``'s RoPE fields from ``rope_parameters`` (transformers 5) or the legacy
    ``rope_scaling`` + ``rope_theta``; an unimplemented rope_type or key is refused."""
    where = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
    rope = dict(d.get(where) or {})
    if any(isinstance(v, Mapping) for v in rope.values()):
        raise _refuse(where, rope, "holds per-layer-type RoPE parameters, which jaxrlhf does "
                      "not implement")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in _ROPE_KEYS:
        raise _refuse(f"{where}.rope_type", kind, "is not implemented (jaxrlhf implements "
                      f"{', '.join(_ROPE_KEYS)})")
    for key in rope:
        if key not in _ROPE_KEYS[kind]:
            raise _refuse(f"{where}.{key}", rope[key], f"is not used by rope_type {kind!r} "
                          "as jaxrlhf implements it")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse(f"{where}.partial_rotary_factor", rope["partial_rotary_factor"],
                      "is not implemented (RoPE on the whole head only)")
    out: dict[str, Any] = {"rope_theta": float(rope.get("rope_theta",
                                                        d.get("rope_theta", 10000.0))),
                           "rope_type": kind}
    if kind == "default":
        return out
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor",
                                                    "high_freq_factor")
    missing = [k for k in needed if k not in rope]
    if missing:
        raise UnsupportedModelError(f"{where} of rope_type {kind!r} lacks {missing}")
    out["rope_factor"] = float(rope["factor"])
    if kind == "llama3":   # transformers prefers a top-level original_max_position_embeddings
        original = d.get("original_max_position_embeddings") or rope.get(
            "original_max_position_embeddings") or d["max_position_embeddings"]
        out.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                   rope_high_freq_factor=float(rope["high_freq_factor"]),
                   rope_original_max_len=int(original))
    return out


def model_config_from_hf(d: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A ``ModelConfig`` from a HF config dict (GPT2Config, LlamaConfig, Qwen2Config); raises
    ValueError naming any field whose effect jaxrlhf does not implement."""
    family = check_supported(d)
    if family == "gpt2":
        dm = d["n_embd"]
        kw = dict(family="gpt2", vocab_size=d["vocab_size"], d_model=dm, n_layers=d["n_layer"],
                  n_heads=d["n_head"], n_kv_heads=d["n_head"],
                  d_ff=d.get("n_inner") or 4 * dm, max_seq_len=d["n_positions"],
                  norm_eps=d.get("layer_norm_epsilon", 1e-5),
                  tie_embeddings=d.get("tie_word_embeddings", True), qkv_bias=True)
    else:
        nh = d["num_attention_heads"]
        kw = dict(family=family, vocab_size=d["vocab_size"], d_model=d["hidden_size"],
                  n_layers=d["num_hidden_layers"], n_heads=nh,
                  n_kv_heads=d.get("num_key_value_heads") or nh, d_ff=d["intermediate_size"],
                  max_seq_len=d["max_position_embeddings"], norm_eps=d.get("rms_norm_eps", 1e-6),
                  tie_embeddings=d.get("tie_word_embeddings", False),
                  qkv_bias=(family == "qwen2") or bool(d.get("attention_bias", False)),
                  **_rope_fields(d))
    kw.update(overrides)
    return ModelConfig(**kw).validate()


def hf_dict_from_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """The HF config.json dict of ``cfg`` (``transformers.AutoConfig.for_model(**d)``)."""
    if cfg.family == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
                    n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                    n_positions=cfg.max_seq_len, n_inner=cfg.d_ff, layer_norm_epsilon=cfg.norm_eps,
                    activation_function="gelu_new", tie_word_embeddings=cfg.tie_embeddings,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    arch = "LlamaForCausalLM" if cfg.family == "llama" else "Qwen2ForCausalLM"
    d = dict(model_type=cfg.family, architectures=[arch], vocab_size=cfg.vocab_size,
             hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
             num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
             max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
             rope_theta=cfg.rope_theta, rope_parameters=rope,
             tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu")
    if cfg.family == "llama":
        d.update(attention_bias=cfg.qkv_bias, mlp_bias=False, head_dim=cfg.head_dim)
    return d
