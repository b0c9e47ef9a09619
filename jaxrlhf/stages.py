"""The stage table: every stage command, one line each (docs/design.md, "Extending it").

The command line's commands and ``--help``, the pipeline's wiring, the Python API's
``run`` / ``run_once`` / ``finished``, the dry run and the stage tests all look stages up
here; each record is the ``STAGE`` of its module (``jaxrlhf.trainers.stage.Stage``). This
module also reads pipeline configs (which stages, in which order) and validates any
config for the stage that will run it.
"""
from __future__ import annotations

import copy
import difflib

import ml_collections

from jaxrlhf import config as config_lib
from jaxrlhf.errors import ConfigError, MissingInputError
from jaxrlhf.trainers import bon, dpo, online_dpo, ppo, pretrain, reward, sft
from jaxrlhf.trainers.stage import Stage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    pretrain.STAGE,
    sft.STAGE,
    reward.STAGE,
    ppo.STAGE,
    dpo.STAGE,
    online_dpo.STAGE,
    bon.STAGE,
)}
PIPELINE = "pipeline"                        # the command that runs a sequence of stages
DEFAULT_PIPELINE = ("sft", "reward", "ppo")  # a pipeline config without ``stages``
# The config field through which a stage reads each product of an earlier stage.
PRODUCT_FIELDS = {"policy": "policy_init", "reward_model": "reward_init",
                  "chosen": "data.source"}
REFERENCE = "@"   # "@<stage name>" in such a field: that pipeline stage's product


def references(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``{product: stage name}`` of a pipeline stage's config fields that name an earlier
    stage (``policy_init="@sft"``) instead of its latest product of that kind."""
    out = {}
    for product, field in PRODUCT_FIELDS.items():
        node = config
        for part in field.split("."):
            node = node.get(part, "") if isinstance(node, ml_collections.ConfigDict) else ""
        if isinstance(node, str) and node.startswith(REFERENCE):
            out[product] = node[len(REFERENCE):]
    return out


def check_references(config: ml_collections.ConfigDict) -> None:
    """Every ``@stage`` reference of a pipeline names an earlier stage that produces what
    the field reads; raises ConfigError naming the field otherwise."""
    produced: dict[str, str] = {}
    for name, command in pipeline_stages(config):
        for product, ref in references(config[name]).items():
            if produced.get(ref) != product:
                raise ConfigError(
                    f"config.{name}.{PRODUCT_FIELDS[product]}='{REFERENCE}{ref}' must name an "
                    f"earlier stage of the pipeline that produces a {product}; the earlier "
                    f"stages produce {produced or 'nothing'}")
        if get(command).produces is not None:
            produced[name] = get(command).produces


def without_references(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a stage's config with its ``@stage`` references cleared, to validate
    before the stages they name have run."""
    config = copy.deepcopy(config)
    for product in references(config):
        config_lib.override(config, PRODUCT_FIELDS[product], "")
    return config


def get(name: str) -> Stage:
    """The stage called ``name``; a ConfigError naming the closest one otherwise."""
    if name not in STAGES:
        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown stage {name!r}{hint}; the stages are {list(STAGES)}")
    return STAGES[name]


def is_pipeline(config: ml_collections.ConfigDict) -> bool:
    """A pipeline config holds one stage config per stage (and, for another sequence than
    SFT -> reward -> PPO, their order in ``stages``)."""
    return "stages" in config or all(name in config for name in DEFAULT_PIPELINE)


def pipeline_stages(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """``(name, command)`` of each stage of a pipeline config, in order: its ``stages``
    field — a sequence of ``(name, command)`` pairs, each name a stage config of the
    pipeline — or SFT -> reward -> PPO."""
    if "stages" not in config:
        return [(name, name) for name in DEFAULT_PIPELINE]
    order = [tuple(stage) for stage in config.stages]
    for entry in order:
        if len(entry) != 2 or entry[1] not in STAGES or entry[0] not in config:
            raise ConfigError(f"config.stages entry {entry!r} must be (name, command) with a "
                              f"stage config config.<name> and a command in {tuple(STAGES)}")
    return order


def check_command(command: str, config: ml_collections.ConfigDict) -> None:
    """``command`` is a stage (or ``pipeline``) and ``config`` is of its kind: a pipeline
    config for ``pipeline``, a single-stage config otherwise."""
    if command != PIPELINE:
        get(command)
    if (command == PIPELINE) != is_pipeline(config):
        kind = "pipeline" if command == PIPELINE else "single-stage"
        raise ConfigError(f"the {command!r} command needs a {kind} config (configs/pipeline/ "
                          "holds pipeline configs, configs/<stage>/ single-stage ones)")


def validate(command: str, config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError naming the first invalid field for running ``config`` with
    ``command`` on ``num_devices`` (MissingInputError for a hub id that cannot be resolved);
    runs before any compilation. A pipeline config is validated stage by stage, and the
    field names carry the stage (``config.ppo.ppo.clip``)."""
    check_command(command, config)
    if command == PIPELINE:
        check_references(config)
        for name, stage in pipeline_stages(config):
            try:
                validate(stage, without_references(config[name]), num_devices)
            except (ConfigError, MissingInputError) as e:
                raise type(e)(str(e).replace("config.", f"config.{name}.", 1)) from None
        return
    get(command).check(config_lib.validate(config), num_devices)
