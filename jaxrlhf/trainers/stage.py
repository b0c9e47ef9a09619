"""What a stage is: the one record (:class:`Stage`) each stage module exports, and what
those records share — the abstract inputs of a dry run and the numbers of a headline.

A stage module (``trainers/sft.py``, ``reward.py``, ``dpo.py``, ``ppo.py``, ``bon.py``,
``pretrain.py``) defines ``STAGE = Stage(...)``; ``jaxrlhf.stages.STAGES`` lists them, and
the command line, the pipeline's wiring, the Python API and the dry run look stages up
there (docs/design.md, "Extending it").
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from jaxrlhf import checkpoint, parallel, workdir as workdir_lib
from jaxrlhf.errors import ConfigError
from jaxrlhf.models.build import abstract_model, resolve_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task

# What a finished stage leaves for the stages after it in a pipeline.
PRODUCTS = ("policy", "reward_model", "chosen")
# {program name: (jitted function, abstract arguments, abstract trained parameters)}
DryRunPrograms = dict[str, tuple[Callable, tuple, Any]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: its command ``name`` and one-line ``help``; the settings ``sections`` it
    reads beyond the shared ``model``, ``mesh``, ``optim``, ``train``, ``data``, ``lora`` and
    ``logging``; ``train(config, workdir) -> summary`` (runs or resumes); what it
    ``produces`` for later stages and which earlier products it ``reads`` (both from
    :data:`PRODUCTS`); whether it ``has_steps`` (checkpointed optimizer steps, so
    ``train.steps`` says when it is done); its ``headline`` (the summary in one line);
    ``dry_run(settings, mesh)``: its compiled programs over abstract weights and batches of
    the config's shapes; and ``check``: the checks of its batches on a device count."""
    name: str
    help: str
    sections: tuple[str, ...]
    train: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
    produces: str | None
    reads: tuple[str, ...]
    has_steps: bool
    headline: Callable[[Mapping[str, Any]], str]
    dry_run: Callable[[RunSettings, Mesh], DryRunPrograms]
    check: Callable[[RunSettings, int], None] = RunSettings.check_batches

    def __post_init__(self):
        unknown = {self.produces, *self.reads} - {None, *PRODUCTS}
        if unknown:
            raise ValueError(f"stage {self.name!r}: {sorted(unknown)} are not products "
                             f"{PRODUCTS}")


# -- headlines ----------------------------------------------------------------------------
def number(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals, or ``n/a`` when the summary lacks it."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def gold_line(summary: Mapping[str, Any]) -> str:
    """``gold B -> A, KL K nats``: the policy-evaluation keys every policy stage reports
    (``jaxrlhf.rl.evaluation.before_after``)."""
    return (f"gold {number(summary.get('gold_before'))} -> {number(summary.get('gold_after'))}"
            f", KL {number(summary.get('kl'), 2)} nats")


def with_gold(line: str, summary: Mapping[str, Any]) -> str:
    """``line``, and :func:`gold_line` after it when the stage evaluated a policy on the
    task (SFT from a policy, DPO on the task)."""
    return line + (f", {gold_line(summary)}" if "gold_after" in summary else "")


# -- the abstract inputs of a dry run -------------------------------------------------------
def model_config(settings: RunSettings) -> ModelConfig:
    """The model a stage would train, without its data: the tokenizer's size is needed only
    when ``model.vocab_size`` is 0 (then the built-in task's tokenizer gives it)."""
    vocab = settings.model.vocab_size
    if not vocab and not settings.model_init:
        if settings.data.source:
            raise ConfigError("config.model.vocab_size=0 takes the vocabulary from the data's "
                              "tokenizer, which a dry run does not build: set "
                              "--config.model.vocab_size")
        vocab = len(get_task(settings.data.task).tokenizer)
    return resolve_config(settings.model, model_init=settings.model_init, vocab_size=vocab)


def trained_config(workdir: str) -> ModelConfig:
    """The model config recorded in a finished run's workdir (its weights are not read)."""
    return ModelConfig(**workdir_lib.read_json(workdir, workdir_lib.MODEL_CARD)["model"])


def policy_config(settings: RunSettings) -> ModelConfig:
    """The config of the policy a stage starts from: ``policy_init``'s, else the run's own."""
    return (trained_config(settings.policy_init) if settings.policy_init
            else model_config(settings))


def abstract_batch(mesh: Mesh, **fields: tuple[tuple[int, ...], Any]
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """``{name: (shape, dtype)}`` as abstract arrays split over the batch axes."""
    sharding = parallel.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in fields.items()}


def abstract_trained(cls, cfg: ModelConfig, **kwargs) -> workdir_lib.TrainedModel:
    """A finished run's model with abstract parameters (shapes only) and a stand-in
    tokenizer that knows only its EOS and pad ids."""
    graphdef, params = abstract_model(cls, cfg, **kwargs)
    tokenizer = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
    return workdir_lib.TrainedModel(tokenizer, cfg, graphdef, params, workdir="")


def abstract_state(program) -> Any:
    """A program's abstract train state on its shardings."""
    return checkpoint.abstract_like(program.abstract_state, program.state_shardings)


def step_program(program, batch: dict[str, jax.ShapeDtypeStruct]) -> DryRunPrograms:
    """A supervised program's step over its abstract state and the abstract ``batch``."""
    return {"step": (program.step, (abstract_state(program), batch),
                     program.abstract_state.params)}
