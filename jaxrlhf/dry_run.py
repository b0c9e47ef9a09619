"""``--dry_run``: compile a stage's training step for a config and report the peak memory it
needs per device (``jaxrlhf.memory``), without data, weights or a single step run — so a
user sees whether a config fits before renting the hardware.

``python -m jaxrlhf sft --config=configs/presets/llama3_8b.py --dry_run``

The step is built by the stage's own ``build`` from abstract parameters (shapes only) and
lowered with abstract batches of the config's shapes; the numbers are those of the backend
it compiles for (see ``jaxrlhf.memory`` for what they mean on CPU).
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from jaxrlhf import checkpoint, config as config_lib, memory, parallel, workdir as workdir_lib
from jaxrlhf.errors import ConfigError
from jaxrlhf.models.build import abstract_model, resolve_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task

GIB = 2 ** 30


def _model_config(settings: RunSettings) -> ModelConfig:
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


def _trained_config(workdir: str) -> ModelConfig:
    """The model config recorded in a finished run's workdir (its weights are not read)."""
    return ModelConfig(**workdir_lib.read_json(workdir, workdir_lib.MODEL_CARD)["model"])


def _batch(mesh: Mesh, **fields: tuple[tuple[int, ...], Any]) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = parallel.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in fields.items()}


def _abstract_model(cls, cfg: ModelConfig, **kwargs) -> workdir_lib.TrainedModel:
    graphdef, params = abstract_model(cls, cfg, **kwargs)
    tokenizer = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
    return workdir_lib.TrainedModel(tokenizer, cfg, graphdef, params, workdir="")


def _state(program) -> Any:
    return checkpoint.abstract_like(program.abstract_state, program.state_shardings)


def _policy_config(settings: RunSettings) -> ModelConfig:
    """The config of the policy a stage starts from: ``policy_init``'s, else the run's own."""
    return (_trained_config(settings.policy_init) if settings.policy_init
            else _model_config(settings))


def sft_steps(settings: RunSettings, mesh: Mesh) -> dict[str, tuple]:
    from jaxrlhf.trainers import sft
    cfg = _policy_config(settings)
    policy = _abstract_model(CausalLM, cfg) if settings.policy_init else None
    program = sft.build(settings, cfg, mesh, policy)
    t, n = settings.train, settings.data.max_len
    batch = _batch(mesh, **{k: ((t.batch_size, n), jnp.int32)
                            for k in ("input_ids", "attention_mask", "loss_mask")})
    return {"step": (program.step, (_state(program), batch), program.abstract_state.params)}


def reward_steps(settings: RunSettings, mesh: Mesh) -> dict[str, tuple]:
    from jaxrlhf.trainers import reward
    cfg = _policy_config(settings)
    program = reward.build(settings, cfg, mesh, init_params=None).supervised
    b, n = settings.train.batch_size, settings.reward.pair_length
    batch = _batch(mesh, chosen_ids=((b, n), jnp.int32), chosen_mask=((b, n), jnp.int32),
                   rejected_ids=((b, n), jnp.int32), rejected_mask=((b, n), jnp.int32),
                   margin=((b,), jnp.float32))
    return {"step": (program.step, (_state(program), batch), program.abstract_state.params)}


def ppo_steps(settings: RunSettings, mesh: Mesh) -> dict[str, tuple]:
    """The iteration as one program, or (``ppo.single_program=False``) each phase."""
    from jaxrlhf.rl.ppo import PTX_FIELDS, iteration_phases
    from jaxrlhf.trainers import ppo
    p = settings.ppo
    policy_cfg = _policy_config(settings)
    reward_cfg = _trained_config(settings.reward_init) if settings.reward_init else policy_cfg
    policy = _abstract_model(CausalLM, policy_cfg)
    reward = (workdir_lib.RewardModel(_abstract_model(ScalarModel, reward_cfg,
                                                      head_init="normal"), 1.0, 0.0)
              if p.reward_source == "model" else None)
    task = get_task(settings.data.task) if p.reward_source == "gold" else None
    if task is not None:
        policy = dataclasses.replace(policy, tokenizer=task.tokenizer)
    program = ppo.build(settings, mesh, policy, reward, task)
    n = p.prompts_per_iteration    # each answered ppo.num_generations times
    fields = {"prompt_ids": ((n, p.prompt_length), jnp.int32),
              "prompt_mask": ((n, p.prompt_length), jnp.int32)}
    if p.ptx_coef > 0:
        fields.update({k: ((n, settings.data.max_len), jnp.int32)
                       for k in PTX_FIELDS})
    args = (_state(program), program.frozen, _batch(mesh, **fields))
    params = program.abstract_state.policy
    if p.single_program:
        return {"iteration": (program.iterate, args, params)}
    steps, carry = {}, {}
    phases = iteration_phases(models=program.models, settings=p,
                              optimizers=ppo.make_optimizers(settings))
    for phase, pinned in zip(phases, ppo.pinned_phases(phases, program.state_shardings, mesh)):
        steps[phase.__name__] = (pinned, (*args, carry), params)
        state, carry = jax.eval_shape(phase, *args, carry)
        args = (checkpoint.abstract_like(state, program.state_shardings), *args[1:])
    return steps


STEPS = {"sft": sft_steps, "reward": reward_steps, "ppo": ppo_steps}


def report(stage: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{stage: {program: per-device memory}} for ``stage`` (or each stage of a pipeline
    config), compiled for the current devices without running anything."""
    if stage == "pipeline":
        return {name: report(command, config[name])[command]
                for name, command in config_lib.pipeline_stages(config)}
    if stage not in STEPS:
        raise ConfigError(f"--dry_run compiles the {sorted(STEPS)} stages; {stage!r} has no "
                          "step table (its programs are those of the stages it runs)")
    settings = RunSettings.from_config(config)
    settings.check_mesh(jax.device_count())
    mesh = parallel.make_mesh(settings.mesh)
    out: dict[str, Any] = {}
    for name, (jitted, args, params) in STEPS[stage](settings, mesh).items():
        used = memory.compiled_memory(jitted.lower(*args).compile())
        out[name] = {**used, "peak_gib": used["peak_bytes"] / GIB,
                     "parameters": sum(x.size for x in jax.tree.leaves(params))}
    return {stage: {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
                    "mesh": dict(mesh.shape), "programs": out}}


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.1f} MiB"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One readable line per compiled program."""
    lines = []
    for stage, info in result.items():
        for name, m in info["programs"].items():
            lines.append(
                f"{stage} {name}: peak {_size(m['peak_bytes'])} per device on {info['devices']} "
                f"x {info['device_kind']} (mesh {info['mesh']}; arguments "
                f"{_size(m['argument_bytes'])}, temporaries {_size(m['temp_bytes'])}, outputs "
                f"{_size(m['output_bytes'])}, donated {_size(m['alias_bytes'])}; "
                f"{m['parameters'] / 1e6:,.1f}M trained parameters)")
    return lines
