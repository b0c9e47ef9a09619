"""Low-rank adapters (LoRA; Hu et al. 2021) on the transformer's linear layers.

A model built with a :class:`LoRAConfig` replaces each linear layer whose name (``q``,
``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``lm_head``) fully matches
``LoRAConfig.targets`` by Flax NNX's ``nnx.LoRALinear``, scaled by ``alpha / rank``
(Hu et al. 2021, §4.1). It keeps the base layer's ``kernel`` and ``bias`` under the same
names and adds ``lora.lora_a`` [in, rank] (He-uniform) and ``lora.lora_b`` [rank, out]
(zeros), both ``nnx.LoRAParam``, so a LoRA model starts as exactly its base model and a
base checkpoint fills it by path.

Training splits the parameters into what trains (the adapters, and a scalar model's new
head) and the frozen rest (:func:`split_trainable`); :func:`merge` folds the adapters into
the base kernels, giving the plain model's parameters for fast sampling and HF export.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# What trains under LoRA: the adapters and a scalar model's head (a new layer).
TRAINABLE = nnx.Any(nnx.LoRAParam, nnx.PathContains("head"))


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Adapters of ``rank`` on the linear layers whose names fully match ``targets``."""
    rank: int
    alpha: float
    targets: str        # a regular expression, e.g. "q|k|v|o|gate|up|down"

    @property
    def scale(self) -> float:
        """The ``alpha / rank`` the adapter's output is multiplied by."""
        return self.alpha / self.rank

    def applies_to(self, name: str) -> bool:
        return re.fullmatch(self.targets, name) is not None


class ScaledLoRALinear(nnx.LoRALinear):
    """``nnx.LoRALinear`` whose adapter output is scaled by ``alpha / rank``:
    ``y = x W + b + (alpha / rank) x A B`` (Hu et al. 2021, eq. 3 and §4.1)."""

    def __init__(self, *args, scale: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        return nnx.Linear.__call__(self, x, out_sharding=out_sharding) + self.scale * self.lora(x)


def linear(lora: LoRAConfig, din: int, dout: int, names: tuple, *, compute_dtype,
           rngs: nnx.Rngs, **linear_kwargs) -> ScaledLoRALinear:
    """A LoRA linear layer whose adapters carry the base kernel's logical axis ``names``
    (``[in, rank]``: ``(names[0], None)``; ``[rank, out]``: ``(None, names[1])``) and are
    kept in float32 whatever the base's dtype."""
    def meta(axes):
        return {"out_sharding": axes, "eager_sharding": False}
    return ScaledLoRALinear(din, dout, lora_rank=lora.rank, lora_dtype=compute_dtype,
                            lora_param_dtype=jnp.float32, scale=lora.scale, rngs=rngs,
                            a_metadata=meta((names[0], None)), b_metadata=meta((None, names[1])),
                            **linear_kwargs)


def split_trainable(params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """``(trainable, frozen)``: the adapters and any scalar head, and everything else."""
    return nnx.split_state(params, TRAINABLE, ...)


def frozen_part(abstract_frozen: nnx.State, params: nnx.State) -> nnx.State:
    """The leaves of ``params`` at the paths of ``abstract_frozen`` (a LoRA model's frozen
    part, filled from its base: a causal LM's parameters serve a scalar model's trunk)."""
    found = dict(nnx.to_flat_state(params))
    missing = [path for path, _ in nnx.to_flat_state(abstract_frozen) if path not in found]
    if missing:
        raise ValueError(f"the LoRA base has no parameter {'.'.join(map(str, missing[0]))}")
    return nnx.from_flat_state([(path, found[path])
                                for path, _ in nnx.to_flat_state(abstract_frozen)])


def join(frozen: nnx.State | None, trainable: nnx.State) -> nnx.State:
    """The whole parameter state from its trainable part and the frozen rest (None when
    every parameter trains)."""
    return trainable if frozen is None else nnx.merge_state(frozen, trainable)


def adapter_paths(params: nnx.State) -> list[tuple]:
    """The path of every adapted layer (the path to its ``kernel``'s parent)."""
    return [path[:-2] for path, _ in nnx.to_flat_state(params)
            if path[-2:] == ("lora", "lora_a")]


def merge(params: nnx.State, scale: float) -> nnx.State:
    """The plain model's parameters: each adapted ``kernel`` becomes ``W + scale A B``
    (in float32, or the kernel's dtype if wider), and the adapters are dropped.
    Works for stacked layers (``[layers, in, rank] @ [layers, rank, out]``) too."""
    flat = dict(nnx.to_flat_state(params))
    for prefix in adapter_paths(params):
        a = flat.pop(prefix + ("lora", "lora_a"))
        b = flat.pop(prefix + ("lora", "lora_b"))
        kernel = flat[prefix + ("kernel",)]
        w = kernel.get_value()
        dtype = jnp.promote_types(w.dtype, jnp.float32)
        delta = jnp.matmul(a.get_value().astype(dtype), b.get_value().astype(dtype))
        flat[prefix + ("kernel",)] = kernel.replace(w.astype(dtype) + scale * delta)
    return nnx.from_flat_state(flat)


def cast(params: Any, dtype: str) -> Any:
    """``params`` with every floating-point leaf (an array, or an abstract
    ``jax.ShapeDtypeStruct`` as a dry run builds) in ``dtype``: how frozen parameters are
    stored (a LoRA base, PPO's reference and reward models)."""
    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
        return x.astype(dtype)
    return jax.tree.map(one, params)
