"""A stage's workdir: the files a stage writes, and how later stages and commands read them.

::

    WORKDIR/config.json     the run's config          WORKDIR/metrics.jsonl  one row per logged step
    WORKDIR/model.json      the model card            WORKDIR/samples.jsonl  decoded samples
    WORKDIR/tokenizer/      the run's tokenizer       WORKDIR/summary.json   the stage's headline numbers
    WORKDIR/checkpoints/    Orbax checkpoints         (reward) reward_normalization.json, calibration.json
    WORKDIR/best/           the best-evaluated state (with config.train.best_metric)

The model card records the model's config and where the checkpoint keeps its parameters, so
:func:`load_model` reads any stage's workdir (SFT, reward, PPO, DPO) the same way. A LoRA
run's checkpoint holds only what trained (adapters, a scalar head); its card points to the
base (a workdir, a local HF directory or a hub id pinned to its commit), and
:func:`load_model` returns the merged model.
Every file is written through ``jaxrlhf.runfiles``: by process 0 only, and atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx

from jaxrlhf import checkpoint, hub, runfiles, scoring
from jaxrlhf.data import tokenizer as tokenizer_lib
from jaxrlhf.errors import CheckpointError, MissingInputError
from jaxrlhf.models import hf, lora as lora_lib
from jaxrlhf.models.build import abstract_model
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel

CONFIG_FILE = "config.json"
MODEL_CARD = "model.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
NORMALIZATION_FILE = "reward_normalization.json"
CALIBRATION_FILE = "calibration.json"


def write_json(workdir: str, name: str, value: Any) -> None:
    """``value`` as indented JSON in ``workdir/name`` (process 0, atomically)."""
    runfiles.write_json(os.path.join(workdir, name), value)


def read_json(workdir: str, name: str) -> Any:
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    write_json(workdir, CONFIG_FILE, config.to_dict())


def run_tokenizer(workdir: str, *, inherited=None, directory: str = "", task=None,
                  texts: Sequence[str] = (), bpe_vocab_size: int = 1024):
    """The run's tokenizer, saved in ``workdir/tokenizer`` so later stages and resumes use
    exactly the same one. The first of: the one already saved there, the one a previous
    stage used (``inherited``), a tokenizer ``directory`` (local, or a hub id), the
    ``task``'s own, or a byte-level BPE of ``bpe_vocab_size`` trained on ``texts``."""
    saved = os.path.join(workdir, TOKENIZER_DIR)
    if os.path.isdir(saved):
        return tokenizer_lib.load_tokenizer(saved)
    if inherited is not None:
        tokenizer = inherited
    elif directory:
        tokenizer = tokenizer_lib.load_tokenizer(directory, field="config.data.tokenizer")
    elif task is not None:
        tokenizer = task.tokenizer
    else:
        tokenizer = tokenizer_lib.train_bpe_tokenizer(texts, bpe_vocab_size)
    runfiles.write_dir(saved, tokenizer.save_pretrained)
    return tokenizer


def write_model_card(workdir: str, model_config: ModelConfig, params_key: str, *,
                     lora: LoRAConfig | None = None, base: str = "",
                     base_dtype: str = "float32") -> None:
    """Record which model a run trains and under which key of its train state the
    checkpoint keeps the parameters (``params`` for SFT, reward and DPO, ``policy`` for
    PPO); under LoRA also the adapters' config and the ``base`` they adapt (a workdir or a
    local HF directory, as an absolute path; a hub id as ``org/name@<commit>``) and the dtype
    it was frozen in."""
    card = {"model": dataclasses.asdict(model_config), "params_key": params_key}
    if lora is not None:
        card.update(lora=dataclasses.asdict(lora),
                    base=hub.pinned(base, field="config.model_init"),
                    base_dtype=base_dtype)
    write_json(workdir, MODEL_CARD, card)


def load_base_params(path: str, model_config: ModelConfig, *, field: str = "base") -> nnx.State:
    """A causal LM's parameters from a run's workdir or a HF directory or hub id (the base of
    LoRA adapters, or the starting point of a stage); ``field`` names ``path`` in errors."""
    if os.path.exists(os.path.join(path, MODEL_CARD)):
        return load_model(path, CausalLM).params
    return hf.load_params(path, model_config, field=field)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained model read back from a stage's workdir (parameters on one device)."""
    tokenizer: Any
    model_config: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    workdir: str


def model_directory(workdir: str) -> str:
    """Where the model a run hands on is kept: its best-evaluated state (``best/``) when it
    selected one by ``train.best_metric``, else its newest checkpoint."""
    best = os.path.join(workdir, BEST_DIR)
    return best if checkpoint.latest_step(best) is not None else os.path.join(
        workdir, CHECKPOINT_DIR)


def load_model(workdir: str, model_cls: Callable[..., nnx.Module], **kwargs) -> TrainedModel:
    """The model the run in ``workdir`` hands on (:func:`model_directory`) as ``model_cls`` (``CausalLM`` for an
    SFT or PPO run, ``ScalarModel`` for a reward run), with its tokenizer and model config.
    A missing or incompatible checkpoint is a clear error."""
    if not os.path.exists(os.path.join(workdir, MODEL_CARD)):
        raise MissingInputError(f"{workdir} holds no trained model (no {MODEL_CARD}); pass the "
                                "workdir of a finished run of the right stage")
    card = read_json(workdir, MODEL_CARD)
    model_config = ModelConfig(**card["model"])
    tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, TOKENIZER_DIR))
    graphdef, abstract = abstract_model(model_cls, model_config, **kwargs)
    lora = LoRAConfig(**card["lora"]) if "lora" in card else None
    if lora is not None:   # the checkpoint holds only what trained
        abstract, abstract_frozen = lora_lib.split_trainable(
            abstract_model(model_cls, model_config, lora=lora, **kwargs)[1])
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process
    _, tree = checkpoint.restore_subtree(model_directory(workdir), card["params_key"],
                                         sharding)
    try:
        params = checkpoint.nnx_state_from_tree(abstract, tree)
    except ValueError as e:
        raise CheckpointError(f"{workdir}: {e} (expected a {model_cls.__name__})") from None
    if lora is not None:
        base = lora_lib.cast(load_base_params(
            card["base"], model_config, field=f"{os.path.join(workdir, MODEL_CARD)}: base"),
            card["base_dtype"])
        merged = lora_lib.merge(lora_lib.join(lora_lib.frozen_part(abstract_frozen, base), params),
                                lora.scale)
        params = lora_lib.cast(merged, model_config.param_dtype)
    return TrainedModel(tokenizer, model_config, graphdef, params, workdir)


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """A trained reward model with the gain and bias that normalise its scores (mean 0,
    std 1 on the reference responses; docs/design.md, PPO detail 9)."""
    model: TrainedModel
    gain: float
    bias: float

    def score(self, ids: jax.Array, mask: jax.Array, params: nnx.State | None = None) -> jax.Array:
        """Normalised scores ``gain * raw + bias`` of sequences [batch, seq] -> [batch]
        (traceable)."""
        params = self.model.params if params is None else params
        return scoring.reward_scores(self.model.graphdef, params, ids, mask, self.gain, self.bias)


def load_reward_model(workdir: str) -> RewardModel:
    """The newest reward-model checkpoint in ``workdir`` and its fitted gain and bias."""
    path = os.path.join(workdir, NORMALIZATION_FILE)
    if not os.path.exists(path):
        raise MissingInputError(f"{path} is missing: the reward-model run in {workdir} did not "
                                "finish; re-run it to completion")
    normalization = read_json(workdir, NORMALIZATION_FILE)
    model = load_model(workdir, ScalarModel, head_init="normal")
    return RewardModel(model, normalization["gain"], normalization["bias"])
