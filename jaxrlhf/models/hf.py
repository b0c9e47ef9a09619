"""HF checkpoint import and export (local directories only; nothing is ever downloaded).

``load_causal_lm(path)`` reads a ``config.json`` + ``*.safetensors`` directory written by
``transformers`` (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM) into a ``CausalLM``;
``save_causal_lm(model, path)`` writes one that ``transformers.AutoModelForCausalLM.from_pretrained``
reads back. Both handle either layer layout (``scan_layers`` False: ``model.blocks[i]``; True:
``model.blocks`` holding [L, ...] stacked parameters).

Layouts: HF GPT-2 uses Conv1D weights [in, out] (same as our kernels) with q/k/v fused in
``attn.c_attn`` along the output axis; Llama/Qwen2 use torch Linear weights [out, in].
"""
from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM

# Per-layer tensors as {our path inside a Block: array}; paths are attribute chains.
_LLAMA_LINEARS = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                  ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                  ("down", "mlp.down_proj"))
_LLAMA_NORMS = (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"))
_GPT2_LINEARS = (("o", "attn.c_proj"), ("up", "mlp.c_fc"), ("down", "mlp.c_proj"))
_GPT2_NORMS = (("ln1", "ln_1"), ("ln2", "ln_2"))


def _check_local(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path!r} is not a local directory. jaxrlhf never downloads from the hub: "
            "pass a local directory holding config.json and *.safetensors.")


def load_hf_config(path: str, **overrides) -> ModelConfig:
    _check_local(path)
    with open(os.path.join(path, "config.json")) as f:
        return ModelConfig.from_hf_dict(json.load(f), **overrides)


def _load_tensors(path: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path!r}")
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(f))
    return out


def _get(obj, path: str):
    for a in path.split("."):
        obj = getattr(obj, a)
    return obj


def _set(p: nnx.Param, x: np.ndarray, name: str) -> None:
    cur = p.get_value()
    if tuple(cur.shape) != tuple(x.shape):
        raise ValueError(f"{name}: checkpoint shape {x.shape} != model shape {cur.shape}")
    p.set_value(jnp.asarray(x, cur.dtype))


def _layer_from_hf(cfg: ModelConfig, w: dict[str, np.ndarray], i: int) -> dict[str, tuple[str, np.ndarray]]:
    """Layer ``i``'s tensors: {our param path in Block: (hf name, array in our layout)}."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    if cfg.family == "gpt2":
        p = f"h.{i}."
        qkv, qkv_b = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]
        for lin, kk, bb in zip("qkv", np.split(qkv, 3, axis=1), np.split(qkv_b, 3)):
            out[f"{lin}.kernel"] = (p + "attn.c_attn.weight", kk)
            out[f"{lin}.bias"] = (p + "attn.c_attn.bias", bb)
        for ours, n in _GPT2_LINEARS:
            out[f"{ours}.kernel"] = (p + n + ".weight", w[p + n + ".weight"])
            out[f"{ours}.bias"] = (p + n + ".bias", w[p + n + ".bias"])
        for ours, n in _GPT2_NORMS:
            out[f"{ours}.scale"] = (p + n + ".weight", w[p + n + ".weight"])
            out[f"{ours}.bias"] = (p + n + ".bias", w[p + n + ".bias"])
        return out
    p = f"model.layers.{i}."
    for ours, n in _LLAMA_LINEARS:
        out[f"{ours}.kernel"] = (p + n + ".weight", w[p + n + ".weight"].T)
        if cfg.qkv_bias and ours in ("q", "k", "v"):
            out[f"{ours}.bias"] = (p + n + ".bias", w[p + n + ".bias"])
    for ours, n in _LLAMA_NORMS:
        out[f"{ours}.scale"] = (p + n + ".weight", w[p + n + ".weight"])
    return out


def _layer_to_hf(cfg: ModelConfig, t: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Inverse of ``_layer_from_hf``: {our param path in Block: array} -> {hf name: array}."""
    out: dict[str, np.ndarray] = {}
    if cfg.family == "gpt2":
        p = f"transformer.h.{i}."
        out[p + "attn.c_attn.weight"] = np.concatenate([t["q.kernel"], t["k.kernel"], t["v.kernel"]], 1)
        out[p + "attn.c_attn.bias"] = np.concatenate([t["q.bias"], t["k.bias"], t["v.bias"]], 0)
        for ours, n in _GPT2_LINEARS:
            out[p + n + ".weight"], out[p + n + ".bias"] = t[f"{ours}.kernel"], t[f"{ours}.bias"]
        for ours, n in _GPT2_NORMS:
            out[p + n + ".weight"], out[p + n + ".bias"] = t[f"{ours}.scale"], t[f"{ours}.bias"]
        return out
    p = f"model.layers.{i}."
    for ours, n in _LLAMA_LINEARS:
        out[p + n + ".weight"] = t[f"{ours}.kernel"].T
        if cfg.qkv_bias and ours in ("q", "k", "v"):
            out[p + n + ".bias"] = t[f"{ours}.bias"]
    if cfg.family == "llama" and cfg.qkv_bias:  # HF attention_bias also biases o_proj; ours has none
        out[p + "self_attn.o_proj.bias"] = np.zeros(t["o.kernel"].shape[1], t["o.kernel"].dtype)
    for ours, n in _LLAMA_NORMS:
        out[p + n + ".weight"] = t[f"{ours}.scale"]
    return out


def _block_paths(cfg: ModelConfig) -> list[str]:
    """Every parameter path inside one Block (same for both layouts)."""
    lin = ("q", "k", "v", "o", "up", "down") + (() if cfg.family == "gpt2" else ("gate",))
    paths = [f"{n}.kernel" for n in lin] + ["ln1.scale", "ln2.scale"]
    if cfg.family == "gpt2":
        paths += [f"{n}.bias" for n in lin] + ["ln1.bias", "ln2.bias"]
    elif cfg.qkv_bias:
        paths += ["q.bias", "k.bias", "v.bias"]
    return paths


def _missing(path: str, w: dict, name: str):
    if name not in w:
        raise KeyError(f"{path!r}: checkpoint has no tensor {name!r} (found e.g. {sorted(w)[:5]})")


def load_causal_lm(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                   scan_layers: bool = False, remat: str = "none", rngs: nnx.Rngs | None = None) -> CausalLM:
    """A ``CausalLM`` with the weights of the HF checkpoint directory ``path``."""
    cfg = load_hf_config(path, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat=remat)
    w = _load_tensors(path)
    m = CausalLM(cfg, rngs=rngs or nnx.Rngs(0))
    if cfg.family == "gpt2":
        w = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in w.items()}
        top = {"embed.embedding": "wte.weight", "pos.embedding": "wpe.weight",
               "ln_f.scale": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    else:
        top = {"embed.embedding": "model.embed_tokens.weight", "ln_f.scale": "model.norm.weight"}
    for ours, name in top.items():
        _missing(path, w, name)
        _set(_get(m.model, ours), w[name], name)
    try:
        layers = [_layer_from_hf(cfg, w, i) for i in range(cfg.n_layers)]
    except KeyError as e:
        raise KeyError(f"{path!r}: checkpoint has no tensor {e.args[0]!r}") from None
    for ours in _block_paths(cfg):
        name = layers[0][ours][0]
        if cfg.scan_layers:
            _set(_get(m.model.blocks, ours), np.stack([l[ours][1] for l in layers]), name + " (stacked)")
        else:
            for blk, l in zip(m.model.blocks, layers):
                _set(_get(blk, ours), l[ours][1], l[ours][0])
    used = set(top.values()) | {name for l in layers for name, _ in l.values()}
    if not cfg.tie_embeddings:
        _missing(path, w, "lm_head.weight")
        _set(m.lm_head.kernel, w["lm_head.weight"].T, "lm_head.weight")
        used.add("lm_head.weight")
    unused = sorted(k for k in set(w) - used if not _ignorable(cfg, k, w[k]))
    if unused:
        raise ValueError(f"{path!r}: tensors this model has no place for (would be silently dropped): "
                         f"{unused[:8]}{' ...' if len(unused) > 8 else ''}")
    return m


def _ignorable(cfg: ModelConfig, name: str, x: np.ndarray) -> bool:
    """Checkpoint tensors that carry no weights for us: buffers, a tied lm_head, zero o_proj biases."""
    if name.endswith(("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")) and "c_attn" not in name:
        return cfg.family == "gpt2" or name.endswith("inv_freq")
    if name == "lm_head.weight" and cfg.tie_embeddings:
        return True
    return name.endswith("o_proj.bias") and not np.any(x)


def causal_lm_to_hf(model: CausalLM) -> dict[str, np.ndarray]:
    """{HF tensor name: numpy array in the HF layout} for ``model`` (param dtype kept)."""
    cfg = model.config
    a = lambda p: np.asarray(p.get_value())  # noqa: E731
    t = model.model
    out: dict[str, np.ndarray] = {}
    if cfg.family == "gpt2":
        out.update({"transformer.wte.weight": a(t.embed.embedding), "transformer.wpe.weight": a(t.pos.embedding),
                    "transformer.ln_f.weight": a(t.ln_f.scale), "transformer.ln_f.bias": a(t.ln_f.bias)})
    else:
        out.update({"model.embed_tokens.weight": a(t.embed.embedding), "model.norm.weight": a(t.ln_f.scale)})
    paths = _block_paths(cfg)
    if cfg.scan_layers:
        stacked = {p: a(_get(t.blocks, p)) for p in paths}
        per_layer = [{p: x[i] for p, x in stacked.items()} for i in range(cfg.n_layers)]
    else:
        per_layer = [{p: a(_get(blk, p)) for p in paths} for blk in t.blocks]
    for i, layer in enumerate(per_layer):
        out.update(_layer_to_hf(cfg, layer, i))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = a(model.lm_head.kernel).T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_causal_lm(model: CausalLM, path: str) -> None:
    """Write ``model`` as a HF checkpoint directory: ``config.json`` + ``model.safetensors``.

    Tied embeddings write no ``lm_head.weight`` (``tie_word_embeddings`` says so in the config).
    Tensors keep the parameter dtype, which the config records as ``torch_dtype``/``dtype``.
    """
    cfg = model.config
    os.makedirs(path, exist_ok=True)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg.update(torch_dtype=cfg.param_dtype, dtype=cfg.param_dtype)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    save_file(causal_lm_to_hf(model), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
