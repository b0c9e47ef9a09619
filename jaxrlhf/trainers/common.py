"""Glue shared by the trainers: model config from the run config, model init, samples."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import checkpoint, parallel, sampling
from jaxrlhf.data import tokenizer as tokenizer_lib
from jaxrlhf.models import hf
from jaxrlhf.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained model read back from a stage's workdir (parameters on one device)."""
    tokenizer: Any
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    workdir: str


def run_tokenizer(config: ml_collections.ConfigDict, workdir: str, *, task=None,
                  texts: Sequence[str] = (), inherited=None):
    """The run's tokenizer, saved in ``workdir/tokenizer`` so later stages and resumes use
    exactly the same one: the one a previous stage used (``inherited``), a local
    directory's (``data.tokenizer``), the task's own, or a byte-level BPE trained on
    ``texts``."""
    saved = os.path.join(workdir, "tokenizer")
    if os.path.isdir(saved):
        return tokenizer_lib.load_tokenizer(saved)
    if inherited is not None:
        tokenizer = inherited
    elif config.data.tokenizer:
        tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer)
    elif task is not None:
        tokenizer = task.tokenizer
    else:
        tokenizer = tokenizer_lib.train_bpe_tokenizer(texts, config.data.bpe_vocab_size)
    tokenizer.save_pretrained(saved)
    return tokenizer


MODEL_CARD = "model.json"


def write_model_card(workdir: str, model_cfg: ModelConfig, params_key: str) -> None:
    """Record which model a run trains and where its checkpoint keeps the parameters, so
    ``load_model`` can read any stage's workdir (SFT, reward, PPO) the same way."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, MODEL_CARD), "w") as f:
        json.dump({"model": dataclasses.asdict(model_cfg), "params_key": params_key}, f, indent=2)


def load_model(workdir: str, model_cls: Callable[..., nnx.Module], **kwargs) -> Restored:
    """The newest checkpoint of the run in ``workdir`` as ``model_cls`` (``CausalLM`` for an
    SFT or PPO run, ``ScalarModel`` for a reward run), with its tokenizer and model config.
    A missing or incompatible checkpoint is a clear error."""
    card_path = os.path.join(workdir, MODEL_CARD)
    if not os.path.exists(card_path):
        raise FileNotFoundError(f"{workdir} holds no trained model (no {MODEL_CARD}); pass the "
                                "workdir of a finished run of the right stage")
    with open(card_path) as f:
        card = json.load(f)
    model_cfg = ModelConfig(**card["model"])
    tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, "tokenizer"))
    graphdef, abstract = abstract_model(model_cls, model_cfg, **kwargs)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _, tree = checkpoint.restore_subtree(os.path.join(workdir, "checkpoints"),
                                         card["params_key"], sharding)
    try:
        params = checkpoint.nnx_state_from_tree(abstract, tree)
    except ValueError as e:
        raise ValueError(f"{workdir}: {e} (expected a {model_cls.__name__})") from None
    return Restored(tokenizer, model_cfg, graphdef, params, workdir)


def model_config(config: ml_collections.ConfigDict, tokenizer) -> ModelConfig:
    """The model's config: from ``config.model_init``'s config.json when set, else from
    ``config.model`` with ``vocab_size`` 0 meaning "the tokenizer's size"."""
    if config.model_init:
        base = hf.load_hf_config(config.model_init)
        return base.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                            scan_layers=config.model.scan_layers, remat=config.model.remat)
    fields = config.model.to_dict()
    if fields["vocab_size"] == 0:
        fields["vocab_size"] = len(tokenizer)
    elif fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"config.model.vocab_size={fields['vocab_size']} is smaller than the "
                         f"tokenizer's {len(tokenizer)} tokens; set it to 0 to follow the tokenizer")
    cfg = ModelConfig(**fields)
    cfg.validate()
    return cfg


def abstract_model(model_cls: Callable[..., nnx.Module], cfg: ModelConfig,
                   **kwargs) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and the abstract (shape-only) state of ``model_cls(cfg)``."""
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0), **kwargs))
    return nnx.split(abstract)


def random_params(model_cls: Callable[..., nnx.Module], cfg: ModelConfig, seed: int,
                  **kwargs) -> nnx.State:
    """Freshly initialised parameters (traceable: call it under ``jit``)."""
    return nnx.split(model_cls(cfg, rngs=nnx.Rngs(seed), **kwargs))[1]


def initial_lm_params(cfg: ModelConfig, config: ml_collections.ConfigDict) -> nnx.State:
    """A causal LM's starting parameters: imported from ``config.model_init`` or random."""
    from jaxrlhf.models.transformer import CausalLM
    if config.model_init:
        model = hf.load_causal_lm(config.model_init, dtype=cfg.dtype,
                                  param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
                                  remat=cfg.remat)
        return nnx.split(model)[1]
    return random_params(CausalLM, cfg, config.seed)


def full_state_shardings(init_state: Callable[[], Any], mesh: Mesh,
                         config: ml_collections.ConfigDict) -> Any:
    """Shardings for a whole train state: every Variable (params and the optimizer moments
    that mirror them) by its logical names, everything else replicated."""
    rules = parallel.rules_table(config.axis_rules)
    return parallel.state_shardings(jax.eval_shape(init_state), mesh, rules)


def fixed_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive full batches (the remainder, fewer than one batch, is left out)."""
    n = len(next(iter(arrays.values()))) // batch_size * batch_size
    return [{k: v[i:i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into ``(ids, mask)``, each [batch, length] int32."""
    length = length or max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        seq = list(seq)[-length:]
        if seq:
            ids[row, length - len(seq):] = seq
            mask[row, length - len(seq):] = 1
    return ids, mask


def decode_rows(tokenizer, tokens: jax.Array | np.ndarray,
                     mask: jax.Array | np.ndarray) -> list[str]:
    """Decode each row's tokens where ``mask`` is 1, special tokens dropped."""
    tokens, mask = jax.device_get((tokens, mask))
    return [tokenizer.decode([t for t, m in zip(row, keep) if m], skip_special_tokens=True)
            for row, keep in zip(tokens, mask)]


def sample_printer(graphdef: nnx.GraphDef, tokenizer, prompts: Sequence[str],
                   config: ml_collections.ConfigDict, workdir: str) -> Callable[[Any, int], None]:
    """A callback that greedily completes ``prompts`` and appends them to samples.jsonl."""
    if not prompts or config.train.num_samples <= 0:
        return lambda params, step: None
    prompts = list(prompts[: config.train.num_samples])
    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    generate = jax.jit(lambda params: sampling.generate(
        graphdef, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
        max_new_tokens=config.train.sample_tokens, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, greedy=True))
    path = os.path.join(workdir, "samples.jsonl")

    def write(params, step: int) -> None:
        completion = generate(params)
        responses = decode_rows(tokenizer, completion.tokens, completion.mask)
        with open(path, "a") as f:
            for prompt, response in zip(prompts, responses):
                f.write(json.dumps({"step": step, "prompt": prompt, "response": response}) + "\n")
        print(f"\n[step {step}] " + " | ".join(f"{p!r} -> {r!r}" for p, r in
                                                zip(prompts, responses)))

    return write


def complete(restored: Restored, prompts: Sequence[str], *, max_new_tokens: int, seed: int = 0,
             batch_size: int = 64, **sampling_kwargs) -> list[str]:
    """Complete text prompts with a restored causal LM (``sampling.generate`` options)."""
    tok = restored.tokenizer
    generate = jax.jit(functools.partial(
        sampling.generate, restored.graphdef, max_new_tokens=max_new_tokens,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, **sampling_kwargs))
    encoded = [tok(p)["input_ids"] for p in prompts]
    length = max(len(e) for e in encoded)
    responses: list[str] = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_pad(encoded[start:start + batch_size], tok.pad_token_id, length)
        out = generate(restored.params, ids, mask, jax.random.key(seed + start))
        responses += decode_rows(tok, out.tokens, out.mask)
    return responses
