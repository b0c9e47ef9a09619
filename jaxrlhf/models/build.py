"""Building models: resolve a run's model config, then abstract, random or imported parameters.

Models are NNX modules split once into ``(graphdef, params)``; jitted code merges them back
inside the trace. Parameters are created unsharded and carry logical axis names, so these
functions need no mesh: ``jaxrlhf.parallel`` places the result.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from jaxrlhf import parallel
from jaxrlhf.errors import ConfigError
from jaxrlhf.models import hf, lora as lora_lib
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.models.transformer import CausalLM


def resolve_config(model: ModelConfig, *, model_init: str, vocab_size: int) -> ModelConfig:
    """The config of the model a run trains.

    With ``model_init`` (a local HF directory or hub id) the architecture is that
    checkpoint's and only the dtypes, layer layout, remat policy and log-prob chunking come
    from ``model``. Otherwise ``model`` as given, with ``vocab_size`` 0 meaning
    ``vocab_size`` (the tokenizer's size).
    """
    if model_init:
        return hf.load_hf_config(model_init, field="config.model_init").replace(
            dtype=model.dtype, param_dtype=model.param_dtype, scan_layers=model.scan_layers,
            remat=model.remat, logits_chunk=model.logits_chunk)
    if model.vocab_size == 0:
        return model.replace(vocab_size=vocab_size)
    if model.vocab_size < vocab_size:
        raise ConfigError(f"config.model.vocab_size={model.vocab_size} is smaller than the "
                          f"tokenizer's {vocab_size} tokens; set it to 0 to follow the tokenizer")
    return model.validate()


def abstract_model(model_cls: Callable[..., nnx.Module], cfg: ModelConfig,
                   **kwargs) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and the abstract (shape-only) state of ``model_cls(cfg)``."""
    return nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0), **kwargs)))


def random_params(model_cls: Callable[..., nnx.Module], cfg: ModelConfig, seed: int,
                  **kwargs) -> nnx.State:
    """Freshly initialised parameters (traceable: call it under ``jit``)."""
    return nnx.split(model_cls(cfg, rngs=nnx.Rngs(seed), **kwargs))[1]


# (parameter shardings) -> parameters placed on them. Runs outside any jit, so imported
# weights enter compiled programs as arguments, never as constants.
ParamsInit = Callable[[nnx.State], nnx.State]


def born_sharded(init: Callable[[], nnx.State]) -> ParamsInit:
    """A traceable initializer jitted with the shardings as its outputs: each parameter is
    created on its own devices."""
    return lambda shardings: jax.jit(init, out_shardings=shardings)()


def given_params_init(params: nnx.State) -> ParamsInit:
    """Parameters already in hand (a finished run's), put on the shardings."""
    return lambda shardings: parallel.put(params, shardings)


def random_params_init(model_cls: Callable[..., nnx.Module], cfg: ModelConfig, seed: int,
                       **kwargs) -> ParamsInit:
    """Random parameters, born sharded."""
    return born_sharded(lambda: random_params(model_cls, cfg, seed, **kwargs))


def initial_lm_params(cfg: ModelConfig, *, model_init: str, seed: int) -> ParamsInit:
    """A causal LM's starting parameters: imported from the HF directory (or hub id)
    ``model_init`` slice by slice onto each device (``hf.load_params``), or random from
    ``seed`` when it is empty."""
    if model_init:
        return lambda shardings: hf.load_params(model_init, cfg, shardings,
                                                field="config.model_init")
    return random_params_init(CausalLM, cfg, seed)


def lora_init(model_cls: Callable[..., nnx.Module], cfg: ModelConfig, start: nnx.State, *,
              lora: LoRAConfig, seed: int, base_dtype: str,
              **kwargs) -> tuple[Callable[[], nnx.State], nnx.State]:
    """A LoRA run's starting point: a traceable function giving the trainable state (fresh
    adapters with zero ``B``, and a scalar model's head) and the frozen part, taken by path
    from ``start`` — the plain model's starting parameters — and stored in ``base_dtype``."""
    _, abstract = abstract_model(model_cls, cfg, lora=lora, **kwargs)
    _, abstract_frozen = lora_lib.split_trainable(abstract)
    frozen = lora_lib.cast(lora_lib.frozen_part(abstract_frozen, start), base_dtype)

    def init() -> nnx.State:
        return lora_lib.split_trainable(random_params(model_cls, cfg, seed, lora=lora,
                                                      **kwargs))[0]
    return init, frozen
