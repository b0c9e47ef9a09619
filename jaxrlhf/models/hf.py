"""HF checkpoint import and export: a local directory, or a hub id ``org/name[@revision]``
resolved to the local Hugging Face cache (``jaxrlhf.hub``; downloaded unless cached).

``load_params(path, cfg, shardings)`` reads a ``config.json`` + ``*.safetensors`` directory
written by ``transformers`` (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM) straight
onto a mesh: each parameter is assembled by ``jax.make_array_from_callback``, which asks for
the slice each device holds; that slice is read from the memory-mapped file (safetensors
``get_slice``), transposed, split or stacked into our layout, and cast. The weights never
pass through a compiled program (no constants in an init program), and the host holds at
most one device's slice of one tensor at a time besides the file's page cache.
``load_causal_lm(path)`` is the same as a ``CausalLM`` on the default device;
``save_causal_lm(model, path)`` writes a directory that
``transformers.AutoModelForCausalLM.from_pretrained`` reads back. Both layer layouts
(``scan_layers`` False: ``model.blocks[i]``; True: ``model.blocks`` holding [L, ...] stacked
parameters) map to the same HF tensors. Which ``config.json`` fields are read, checked or
refused is ``jaxrlhf.models.hf_config``.

Layouts: HF GPT-2 uses Conv1D weights [in, out] (as our kernels) with q/k/v fused in
``attn.c_attn`` along the output axis; Llama/Qwen2 use torch Linear weights [out, in].
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxrlhf.errors import DataError, MissingInputError, UnsupportedModelError
from jaxrlhf.hub import resolve_hf_dir
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.hf_config import hf_dict_from_model_config, model_config_from_hf
from jaxrlhf.models.transformer import CausalLM

# (our module inside a Block, HF module inside a layer)
_LLAMA_LINEARS = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                  ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                  ("down", "mlp.down_proj"))
_LLAMA_NORMS = (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"))
_GPT2_LINEARS = (("o", "attn.c_proj"), ("up", "mlp.c_fc"), ("down", "mlp.c_proj"))
_GPT2_NORMS = (("ln1", "ln_1"), ("ln2", "ln_2"))

Index = tuple[slice, ...]


def _local(path: str, field: str) -> str:
    """The directory ``path`` names (a hub id: its cached snapshot, ``jaxrlhf.hub``)."""
    path = resolve_hf_dir(path, field=field)
    if not os.path.isdir(path):
        raise MissingInputError(
            f"{field}={path!r} is neither a local directory nor a hub id (org/name or "
            "org/name@revision): pass a local directory holding config.json and *.safetensors.")
    return path


def load_hf_config(path: str, *, field: str = "model", **overrides) -> ModelConfig:
    """The ``ModelConfig`` of the HF directory (or hub id) ``path``; a config field whose
    effect jaxrlhf does not implement is an error naming the field and the file. ``field``
    names ``path`` in errors (``config.model_init``)."""
    path = _local(path, field)
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise MissingInputError(f"{path!r} has no config.json: a Hugging Face model directory "
                                "holds config.json and *.safetensors")
    with open(file) as f:
        try:
            return model_config_from_hf(json.load(f), **overrides)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{file}: {e}") from None
        except ValueError as e:     # not JSON, or values of the wrong kind
            raise DataError(f"{file}: {e}") from None


class SafetensorsDir:
    """The tensors of a directory of ``*.safetensors`` files, read slice by slice."""

    def __init__(self, path: str):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise MissingInputError(f"no *.safetensors in {path!r}")
        self.path = path
        self._handles = [safe_open(f, framework="numpy") for f in files]
        self._where = {name: h for h in self._handles for name in h.keys()}

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, index: Index | None = None) -> np.ndarray:
        """Tensor ``name`` (or its ``index`` slice), read from the file."""
        tensor = self._slice(name)
        return np.asarray(tensor[index] if index else tensor[:])

    def _slice(self, name: str):
        if name not in self._where:
            raise KeyError(f"{self.path!r}: checkpoint has no tensor {name!r} "
                           f"(found e.g. {sorted(self._where)[:5]})")
        return self._where[name].get_slice(name)


def _bounds(index: Index, shape: Sequence[int]) -> list[tuple[int, int]]:
    return [s.indices(n)[:2] for s, n in zip(index, shape)]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one of our parameters lives in a HF checkpoint: ``names`` (one tensor, or one per
    layer when our parameter stacks the layers), read transposed (torch Linear [out, in]) or
    as the column block ``columns = (offset, width)`` of a fused tensor's last axis."""
    names: tuple[str, ...]
    stacked: bool = False
    transpose: bool = False
    columns: tuple[int, int] | None = None

    def shape(self, ckpt: SafetensorsDir) -> tuple[int, ...]:
        """Our parameter's shape, from the checkpoint's."""
        shape = ckpt.shape(self.names[0])
        if self.columns:
            shape = (*shape[:-1], self.columns[1])
        if self.transpose:
            shape = shape[::-1]
        return (len(self.names), *shape) if self.stacked else shape

    def read(self, ckpt: SafetensorsDir, index: Index, shape: Sequence[int]) -> np.ndarray:
        """The ``index`` slice (in our layout, of our ``shape``) of this parameter."""
        bounds = _bounds(index, shape)
        if self.stacked:
            (start, stop), bounds = bounds[0], bounds[1:]
            return np.stack([self._read_one(ckpt, n, bounds) for n in self.names[start:stop]])
        return self._read_one(ckpt, self.names[0], bounds)

    def _read_one(self, ckpt: SafetensorsDir, name: str, bounds) -> np.ndarray:
        if self.columns:
            (lo, hi), offset = bounds[-1], self.columns[0]
            bounds = [*bounds[:-1], (lo + offset, hi + offset)]
        if self.transpose:
            bounds = bounds[::-1]
        x = ckpt.read(name, tuple(slice(lo, hi) for lo, hi in bounds))
        return x.T if self.transpose else x


def _layer_sources(cfg: ModelConfig, i: int, prefix: str) -> dict[str, Source]:
    """{our path inside a Block: its Source} for layer ``i``."""
    out: dict[str, Source] = {}
    if cfg.family == "gpt2":
        p = f"{prefix}h.{i}."
        for j, lin in enumerate("qkv"):
            block = (j * cfg.d_model, cfg.d_model)
            out[f"{lin}.kernel"] = Source((p + "attn.c_attn.weight",), columns=block)
            out[f"{lin}.bias"] = Source((p + "attn.c_attn.bias",), columns=block)
        for ours, n in _GPT2_LINEARS:
            out[f"{ours}.kernel"] = Source((p + n + ".weight",))
            out[f"{ours}.bias"] = Source((p + n + ".bias",))
        for ours, n in _GPT2_NORMS:
            out[f"{ours}.scale"] = Source((p + n + ".weight",))
            out[f"{ours}.bias"] = Source((p + n + ".bias",))
        return out
    p = f"model.layers.{i}."
    for ours, n in _LLAMA_LINEARS:
        out[f"{ours}.kernel"] = Source((p + n + ".weight",), transpose=True)
        if cfg.qkv_bias and ours in ("q", "k", "v"):
            out[f"{ours}.bias"] = Source((p + n + ".bias",))
    for ours, n in _LLAMA_NORMS:
        out[f"{ours}.scale"] = Source((p + n + ".weight",))
    return out


def param_sources(cfg: ModelConfig, names: set[str]) -> dict[tuple, Source]:
    """{our CausalLM parameter path (as in ``nnx.to_flat_state``): its Source} for a
    checkpoint whose tensor names are ``names``."""
    if cfg.family == "gpt2":
        prefix = "transformer." if "transformer.wte.weight" in names else ""
        top = {("embed", "embedding"): "wte.weight", ("pos", "embedding"): "wpe.weight",
               ("ln_f", "scale"): "ln_f.weight", ("ln_f", "bias"): "ln_f.bias"}
        top = {k: prefix + v for k, v in top.items()}
    else:
        prefix = ""
        top = {("embed", "embedding"): "model.embed_tokens.weight",
               ("ln_f", "scale"): "model.norm.weight"}
    out = {("model", *k): Source((v,)) for k, v in top.items()}
    layers = [_layer_sources(cfg, i, prefix) for i in range(cfg.n_layers)]
    for path in layers[0]:
        key = tuple(int(a) if a.isdigit() else a for a in path.split("."))
        if cfg.scan_layers:
            first = layers[0][path]
            out[("model", "blocks", *key)] = dataclasses.replace(
                first, names=tuple(l[path].names[0] for l in layers), stacked=True)
        else:
            for i, layer in enumerate(layers):
                out[("model", "blocks", i, *key)] = layer[path]
    if not cfg.tie_embeddings:
        out[("lm_head", "kernel")] = Source(("lm_head.weight",), transpose=True)
    return out


def _unused(cfg: ModelConfig, ckpt: SafetensorsDir, used: set[str], with_head: bool) -> list[str]:
    """Checkpoint tensors that carry weights this model has no place for. Ignored: buffers,
    a tied (or, for a reward model's trunk, any) ``lm_head``, all-zero ``o_proj`` biases."""
    def ignorable(name: str) -> bool:
        if name.endswith("rotary_emb.inv_freq"):
            return True
        if cfg.family == "gpt2" and name.endswith(("attn.bias", "attn.masked_bias")) \
                and "c_attn" not in name:
            return True
        if name == "lm_head.weight":
            return cfg.tie_embeddings or not with_head
        return name.endswith("o_proj.bias") and not np.any(ckpt.read(name))
    return sorted(n for n in ckpt.names() - used if not ignorable(n))


def load_params(path: str, cfg: ModelConfig, shardings: nnx.State | None = None, *,
                field: str = "model") -> nnx.State:
    """The parameters of the HF checkpoint ``path`` (a directory or hub id; ``field`` names
    it in errors) as a ``CausalLM(cfg)`` state, each array
    assembled on its ``shardings`` (a state of the same paths holding ``NamedSharding``s —
    the whole model's, or only its ``model`` trunk for a reward or value model) or, with
    none, on the default device. A tensor the model has no place for, or a shape mismatch,
    is an error naming it."""
    path = _local(path, field)
    ckpt = SafetensorsDir(path)
    abstract = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))[1]
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda v: v.replace(device), abstract,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    wanted = dict(nnx.to_flat_state(shardings))
    shapes = dict(nnx.to_flat_state(abstract))
    sources = param_sources(cfg, ckpt.names())
    dtype = jax.numpy.dtype(cfg.param_dtype)
    loaded = []
    for key, sharding in wanted.items():
        source, shape = sources[key], tuple(shapes[key].get_value().shape)
        if source.shape(ckpt) != shape:
            raise UnsupportedModelError(
                f"{path!r}: {source.names[0]} has shape {source.shape(ckpt)} in our layout, but "
                f"the model's {'.'.join(map(str, key))} is {shape}")
        array = jax.make_array_from_callback(
            shape, sharding.get_value(),
            lambda index, s=source, n=shape: s.read(ckpt, index, n).astype(dtype, copy=False))
        loaded.append((key, shapes[key].replace(array)))
    used = {name for key in wanted for name in sources[key].names}
    unused = _unused(cfg, ckpt, used, with_head=("lm_head", "kernel") in wanted)
    if unused:
        raise UnsupportedModelError(
            f"{path!r}: tensors this model has no place for (would be silently dropped): "
            f"{unused[:8]}{' ...' if len(unused) > 8 else ''}")
    return nnx.from_flat_state(loaded)


def load_causal_lm(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                   scan_layers: bool = False, remat: str = "none",
                   field: str = "model") -> CausalLM:
    """A ``CausalLM`` with the weights of the HF checkpoint directory (or hub id) ``path``."""
    path = _local(path, field)
    cfg = load_hf_config(path, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
                         remat=remat)
    graphdef = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))[0]
    return nnx.merge(graphdef, load_params(path, cfg))


def _layer_to_hf(cfg: ModelConfig, t: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """{our param path in Block: array} of layer ``i`` -> {hf name: array}."""
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


def _get(obj, path: str):
    for a in path.split("."):
        obj = getattr(obj, a)
    return obj


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
    hf_cfg = hf_dict_from_model_config(cfg)
    hf_cfg.update(torch_dtype=cfg.param_dtype, dtype=cfg.param_dtype)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    save_file(causal_lm_to_hf(model), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
