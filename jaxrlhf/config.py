"""The base config every experiment starts from, config files, overrides and validation.

Configs are ml_collections ``ConfigDict``s, locked so that a misspelt override is an error
naming the field. ``validate`` checks values before anything is compiled (docs/design.md,
rule 6) by building the typed settings of ``jaxrlhf.settings``, which the stages then use;
the defaults are those settings' own (``base_config``).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxrlhf import hub
from jaxrlhf.errors import ConfigError, JaxRLHFError, MissingInputError
from jaxrlhf.models.presets import PRESETS
from jaxrlhf.settings import ALIASES, RunSettings, alias_targets, field_default

def base_config() -> ml_collections.ConfigDict:
    """The defaults every experiment config starts from (and states only what differs):
    ``RunSettings()``'s fields as a ``ConfigDict`` — the defaults are written once, on the
    settings dataclasses (``jaxrlhf.sections``) — plus each deprecated name of
    ``settings.ALIASES`` as an unset placeholder of its new field's type."""
    defaults = RunSettings()
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(RunSettings):
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            value = ml_collections.ConfigDict(dataclasses.asdict(value))
        elif isinstance(value, Mapping):
            value = ml_collections.ConfigDict(dict(value))
        c[field.name] = value
    for old in ALIASES:
        section, leaf = old.split(".")
        c[section][leaf] = config_dict.placeholder(type(field_default(alias_targets(old)[0])))
    return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, so one experiment file can reuse another's.
    ``FILE.py:ARG`` calls ``get_config(ARG)``, as ``--config=FILE.py:ARG`` does on the
    command line (ml_collections' convention; e.g. ``configs/experiments/stages.py:smoke``)."""
    import importlib.util
    stem, colon, arg = path.partition(".py:")
    path = stem + ".py" if colon else path
    if not os.path.isfile(path):
        raise MissingInputError(f"--config={path}: no such config file")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config={path}: not a Python config file (FILE.py defining "
                          "get_config())")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"--config={path} defines no get_config()")
        return module.get_config(arg) if arg else module.get_config()
    except JaxRLHFError:
        raise
    except Exception as e:  # the config file's own code failed: say so in one line
        raise ConfigError(f"--config={path}{colon}{arg}: the config file failed: "
                          f"{type(e).__name__}: {e}") from e


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field of ``config`` as a dotted name (``ppo.kl_coef``)."""
    names = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            names += field_names(value, name + ".")
        else:
            names.append(name)
    return names


def unknown_field_message(config: ml_collections.ConfigDict, name: str) -> str:
    """``unknown config field 'x'; did you mean 'ppo.x'?`` with the closest known names."""
    known = [k for k in field_names(config)   # deprecated names are not suggested
             if not any(k == old or k.endswith("." + old) for old in ALIASES)]
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config field {name!r}{hint}"


def override(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    """Set the dotted field ``name`` of ``config`` to ``value``, as ``--config.NAME=VALUE``
    does: the field must exist and the value must fit its type."""
    *parents, leaf = name.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(unknown_field_message(config, name))
        node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(unknown_field_message(config, name))
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config.{name}={value!r}: {e}") from None


# Fields naming a local directory that must exist when set.
PATH_FIELDS = {"model_init": "a local Hugging Face model directory (config.json + "
                             "safetensors) or a hub id org/name[@revision]",
               "policy_init": "the workdir of a finished SFT run",
               "reward_init": "the workdir of a finished reward-model run",
               "data.tokenizer": "a local tokenizer directory or a hub id org/name[@revision]"}
# The path fields that also take a hub id (``jaxrlhf.hub``), and whether the model's weights
# are fetched for it (a tokenizer needs only its own files).
HUB_FIELDS = {"model_init": True, "data.tokenizer": False}


def check_paths(settings: RunSettings) -> None:
    """Every directory the config names exists (ConfigError naming the field otherwise);
    a hub id in a ``HUB_FIELDS`` field resolves to its cached snapshot, downloaded unless
    cached (MissingInputError naming the field otherwise)."""
    values = {"model_init": settings.model_init, "policy_init": settings.policy_init,
              "reward_init": settings.reward_init, "data.tokenizer": settings.data.tokenizer}
    for field, value in values.items():
        if not value:
            continue
        if field in HUB_FIELDS and hub.is_hub_id(value):
            hub.resolve_hf_dir(value, field=f"config.{field}", weights=HUB_FIELDS[field])
        elif not os.path.isdir(os.path.expanduser(value)):
            raise ConfigError(f"config.{field}={value!r} is not a directory; it must be "
                              f"{PATH_FIELDS[field]}")


def validate(config: ml_collections.ConfigDict) -> RunSettings:
    """The typed settings of a single-stage config whose every named directory exists;
    raises ConfigError naming the first invalid field, before any compilation. The checks
    of a stage and a device count are the stage's (``jaxrlhf.stages.validate``)."""
    settings = RunSettings.from_config(config)
    check_paths(settings)
    return settings


# Activation checkpointing per preset: save the weight matmuls' outputs where they fit,
# recompute whole blocks for the largest model.
PRESET_REMAT = {"gpt2_124m": "dots_with_no_batch_dims_saveable",
                "qwen2_5_0_5b": "dots_with_no_batch_dims_saveable",
                "llama3_2_1b": "dots_with_no_batch_dims_saveable", "llama3_8b": "full"}


def preset_config(name: str, stage: str = "sft") -> ml_collections.ConfigDict:
    """``base_config`` with the model preset ``name`` (``jaxrlhf.models.presets``; random
    init unless ``model_init=DIR``) at an accelerator-sized experiment shape: bf16 compute
    with fp32 parameters and optimizer state, scanned layers with remat, log-probs in chunks
    of 64 positions, FSDP over every device; batches of 32 rows of 1024 tokens (SFT, DPO,
    pretraining; reward pairs of 1024 tokens), or for ``stage="ppo"`` 256 prompts of 256
    tokens with 256-token responses and bf16 frozen models.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; the presets are {sorted(PRESETS)}")
    c = base_config()
    c.model.update(PRESETS[name])
    c.model.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                   remat=PRESET_REMAT[name], logits_chunk=64)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(batch_size=256 if stage == "ppo" else 32, grad_accum=4)
    c.data.max_len = 1024
    c.reward.update(max_prompt_tokens=512, max_response_tokens=511)
    c.sampling.update(prompt_length=256, response_length=256)
    c.ppo.update(num_minibatches=4, grad_accum=4, frozen_dtype="bfloat16")
    return c
