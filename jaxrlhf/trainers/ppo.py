"""PPO against a reward model (or the task's gold reward), with a KL penalty to the SFT policy.

``python -m jaxrlhf ppo --config=configs/ppo/quickstart.py --workdir=DIR
    --config.policy_init=SFT_WORKDIR --config.reward_init=RM_WORKDIR``

The algorithm is ``jaxrlhf.rl.ppo``; this shell loads the SFT policy and reward model,
compiles the iteration for the mesh — by default ONE ``jax.jit`` program of ``(state,
frozen, prompts)`` with donated state, or with ``ppo.single_program=False`` its phases as
separate programs (less peak memory, same numbers) — and runs it in the shared loop with
held-out evaluation. ``train.steps`` counts iterations.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import checkpoint, optim, parallel, workdir as workdir_lib
from jaxrlhf.data import sft as sft_data
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.data.tokenizer import decode_rows, left_pad
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.build import abstract_model, lora_init, random_params
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.reward_fns import HostRewardFunctions
from jaxrlhf.rl import evaluation, kl as kl_lib
from jaxrlhf.rl.ppo import (PTX_FIELDS, Frozen, Models, Optimizers, PPOState, evaluate_policy,
                            iteration_phases, run_phases)
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.tasks.base import Task, traceable_gold
from jaxrlhf.trainers import loop
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, abstract_state,
                                    abstract_trained, gold_line, policy_config, trained_config)
from jaxrlhf.workdir import RewardModel, TrainedModel


@dataclasses.dataclass(frozen=True)
class Program:
    models: Models
    init_state: Callable[[], PPOState]
    abstract_state: Any
    state_shardings: Any
    frozen: Frozen
    iterate: Callable         # (state, frozen, prompt batch) -> (state, metrics)
    step: Callable[[PPOState, loop.Batch], tuple[PPOState, dict[str, jax.Array]]]
    evaluate: Callable        # (policy params, prompt batch, key) -> per-sample stats


def make_optimizers(settings: RunSettings) -> Optimizers:
    """Adam for the policy and the value model, the learning rate annealed to 0 over every
    update of the run (PPO details 16-17)."""
    total = settings.train.steps * settings.ppo.updates_per_iteration
    adam, schedule = optim.ppo_adam(settings.optim, settings.ppo, total)
    return Optimizers(adam, adam, schedule)   # optax transformations are stateless


def compile_iteration(phases, *, single_program: bool, state_shardings, frozen_shardings,
                      mesh: Mesh) -> Callable:
    """``(state, frozen, batch) -> (state, metrics)``: the phases jitted as one program, or
    each phase jitted on its own (state donated and kept on its shardings either way)."""
    if single_program:
        return parallel.MeshJit(mesh, functools.partial(run_phases, phases),
                                in_shardings=(state_shardings, frozen_shardings,
                                              parallel.batch_sharding(mesh)),
                                out_shardings=(state_shardings, parallel.replicated(mesh)),
                                donate_argnums=0)

    return functools.partial(run_phases, pinned_phases(phases, state_shardings, mesh))


def pinned_phases(phases, state_shardings, mesh: Mesh) -> list[parallel.MeshJit]:
    """Each phase jitted on its own, with donated state kept on its shardings (the
    memory-light ``ppo.single_program=False`` mode)."""
    def pinned(phase):
        def run(state, frozen, batch, carry):
            state, carry = phase(state, frozen, batch, carry)
            return jax.lax.with_sharding_constraint(state, state_shardings), carry
        run.__name__ = phase.__name__
        return parallel.MeshJit(mesh, run, donate_argnums=0)
    return [pinned(phase) for phase in phases]


class Trained(NamedTuple):
    """One trained model of PPO: its graph, ``init(weights) -> initial trainable state``
    (traceable), the ``weights`` it starts from (arguments of the start program, never
    constants; None when it needs none) and the parameters held frozen beside it."""
    graphdef: nnx.GraphDef | None
    init: Callable[[nnx.State | None], nnx.State | None]
    weights: nnx.State | None
    frozen: nnx.State | None


def policy_model(settings: RunSettings, policy: TrainedModel) -> Trained:
    """The trained policy: the SFT parameters themselves, or zero-effect adapters under LoRA;
    frozen beside it the reference parameters (under LoRA also the adapters' base, in
    ``lora.base_dtype``)."""
    lora = settings.lora.config
    if lora is None:
        return Trained(policy.graphdef, lambda weights: weights, policy.params, policy.params)
    graphdef, _ = abstract_model(CausalLM, policy.model_config, lora=lora)
    init, base = lora_init(CausalLM, policy.model_config, policy.params, lora=lora,
                           seed=settings.seed, base_dtype=settings.lora.base_dtype)
    return Trained(graphdef, lambda weights: init(), None, base)


def value_model(settings: RunSettings, policy: TrainedModel,
                reward: RewardModel | None) -> Trained:
    """The value model: the reward model's trunk (``value_init='reward'``) or the policy's,
    under a zero value head (PPO detail 15); with ``shared`` only the head is its own; under
    LoRA adapters on a frozen trunk. With a critic-free estimator there is none."""
    p, lora = settings.ppo, settings.lora.config
    if not p.uses_value_model:
        return Trained(None, lambda weights: None, None, None)
    source = reward.model if p.value_init == "reward" else policy
    graphdef, _ = abstract_model(ScalarModel, source.model_config, head_init="zeros", lora=lora)
    if lora is not None and not p.shared_trunk:
        init, trunk = lora_init(ScalarModel, source.model_config, source.params, lora=lora,
                                seed=settings.seed, base_dtype=settings.lora.base_dtype,
                                head_init="zeros")
        return Trained(graphdef, lambda weights: init(), None, trunk)

    def init(trunk: nnx.State | None) -> nnx.State:
        value = random_params(ScalarModel, source.model_config, settings.seed,
                              head_init="zeros", lora=lora)
        if p.shared_trunk:   # only the head is the value model's own
            return nnx.State({"head": value["head"]})
        value["model"] = trunk
        return value

    return Trained(graphdef, init, None if p.shared_trunk else source.params["model"], None)


def build(settings: RunSettings, mesh: Mesh, policy: TrainedModel, reward: RewardModel | None,
          task: Task | None, examples: Sequence[Mapping[str, Any]] = ()) -> Program:
    """Jit one PPO iteration (single program, or phase by phase) for ``mesh``; ``examples``
    are the training prompts' rows (``prompt_index`` of the batches), whose columns the
    Python reward functions receive (``ppo.reward_fns``)."""
    p, lora = settings.ppo, settings.lora.config
    functions = (HostRewardFunctions(p.reward_fns, examples, policy.tokenizer)
                 if p.reward_fns else None)
    trained_policy, trained_value = policy_model(settings, policy), value_model(settings, policy,
                                                                                reward)
    models = Models(
        policy=trained_policy.graphdef, ref=policy.graphdef, value=trained_value.graphdef,
        reward=reward.model.graphdef if reward is not None else None,
        gain=reward.gain if reward is not None else 1.0,
        bias=reward.bias if reward is not None else 0.0,
        gold=traceable_gold(task, policy.tokenizer) if task is not None else None,
        eos_id=policy.tokenizer.eos_token_id, pad_id=policy.tokenizer.pad_token_id,
        lora_scale=lora.scale if lora is not None else None,
        reward_fns=functions.traceable() if functions is not None else None)
    optimizers = make_optimizers(settings)

    def make_state(policy_weights: nnx.State | None,
                   value_weights: nnx.State | None) -> PPOState:
        trainable, value = trained_policy.init(policy_weights), trained_value.init(value_weights)
        return PPOState(step=jnp.zeros((), jnp.int32), policy=trainable, value=value,
                        policy_opt=optimizers.policy.init(trainable),
                        value_opt=optimizers.value.init(value) if value is not None else None,
                        kl=kl_lib.init_kl_state(p.kl_coef),
                        # one global key, the same on every process (detail 18)
                        rng=jax.random.key_data(jax.random.key(settings.seed)))

    abstract_state = jax.eval_shape(make_state, trained_policy.weights, trained_value.weights)
    state_shardings = parallel.state_shardings(abstract_state, mesh, settings.rules)
    start = jax.jit(make_state, out_shardings=state_shardings)
    weight_shardings = (state_shardings.policy if trained_policy.weights is not None else None,
                        state_shardings.value["model"] if trained_value.weights is not None
                        else None)

    def init_state() -> PPOState:
        """The initial state; the weights enter ``start`` as arguments, never as constants."""
        return start(*parallel.put((trained_policy.weights, trained_value.weights),
                                   weight_shardings))

    frozen = Frozen(ref=trained_policy.frozen, reward=reward.model.params if reward else None,
                    value_base=trained_value.frozen)
    if p.frozen_dtype:   # the reference and reward models only run forward passes
        frozen = lora_lib.cast(frozen, p.frozen_dtype)
    frozen_shardings = parallel.state_shardings(frozen, mesh, settings.rules)
    frozen = parallel.put(frozen, frozen_shardings)
    iterate = compile_iteration(
        iteration_phases(models=models, settings=p, sampling=settings.sampling,
                         optimizers=optimizers),
        single_program=p.single_program, state_shardings=state_shardings,
        frozen_shardings=frozen_shardings, mesh=mesh)
    evaluate = parallel.MeshJit(mesh, functools.partial(evaluate_policy, models=models,
                                                        sampling=settings.sampling))

    def step(state: PPOState, batch: loop.Batch) -> tuple[PPOState, dict[str, jax.Array]]:
        out = iterate(state, frozen, batch)
        if functions is not None:   # a reward function's failure, raised in one line
            functions.raise_failure_after(out)
        return out

    return Program(models, init_state, abstract_state, state_shardings, frozen, iterate, step,
                   lambda params, batch, key: evaluate(params, frozen, batch, key))


def prompt_arrays(tokenizer, examples: list[dict],
                  settings: RunSettings) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Left-padded prompts (``prompt_ids``, ``prompt_mask`` [n, prompt_length]) and, when
    the ptx term is on, the demonstrations as LM rows; with what was altered on the way
    (prompts cut to their last ``sampling.prompt_length`` tokens, empty prompts, and the
    ptx rows' counts)."""
    length = settings.sampling.prompt_length
    prompts = [tokenizer(e["prompt"])["input_ids"] for e in examples]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, length)
    arrays = {"prompt_ids": ids, "prompt_mask": mask}  # [n, prompt_length]
    if settings.ppo.reward_fns:     # each row's example, for the reward functions' columns
        arrays["prompt_index"] = np.arange(len(examples), dtype=np.int32)  # [n]
    counts: dict[str, Any] = {"prompts": len(prompts),
                              "prompt_truncated": sum(len(x) > length for x in prompts),
                              "empty_prompt": sum(not e["prompt"].strip() for e in examples)}
    if settings.ppo.ptx_coef > 0:
        lm = sft_data.tokenize_sft(examples, tokenizer, settings.data.max_len)
        arrays.update({k: lm[k] for k in PTX_FIELDS})
        counts["ptx"] = lm.stats.report()
    return arrays, counts


def load_inputs(settings: RunSettings) -> tuple[TrainedModel, RewardModel | None, Task]:
    """The SFT policy, the reward model (unless the gold reward is the reward) and the task."""
    p, reward_init = settings.ppo, settings.reward_init
    if not settings.policy_init:
        raise ConfigError("config.policy_init is empty: pass the workdir of a finished SFT run "
                          "(--config.policy_init=SFT_WORKDIR)")
    policy = workdir_lib.load_model(settings.policy_init, CausalLM)
    reward = None
    if p.reward_source == "model":
        if not reward_init:
            raise ConfigError("config.reward_init is empty: pass the workdir of a finished "
                              "reward-model run, or set --config.ppo.reward_source=gold")
        reward = workdir_lib.load_reward_model(reward_init)
        if len(reward.model.tokenizer) != len(policy.tokenizer):
            raise ConfigError(f"the reward model in {reward_init} uses a different tokenizer "
                             f"({len(reward.model.tokenizer)} tokens) from the policy in "
                             f"{settings.policy_init} ({len(policy.tokenizer)}); train it with "
                             "--config.policy_init=SFT_WORKDIR")
    return policy, reward, get_task(settings.data.task)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) PPO; writes metrics, eval samples and summary.json to ``workdir``."""
    settings = RunSettings.from_config(config)
    p = settings.ppo
    mesh = parallel.make_mesh(settings.mesh)
    policy, reward, task = load_inputs(settings)
    tok = workdir_lib.run_tokenizer(workdir, inherited=policy.tokenizer)
    workdir_lib.write_model_card(workdir, policy.model_config, "policy",
                                 lora=settings.lora.config, base=settings.policy_init,
                                 base_dtype=settings.lora.base_dtype)
    examples = task.demonstrations(p.num_prompts, seed=settings.seed)
    program = build(settings, mesh, policy, reward, task, examples)
    train_prompts, data_counts = prompt_arrays(tok, examples, settings)
    print(f"[ppo] train prompts: {data_counts}")
    g = settings.sampling
    eval_prompts, eval_arrays = evaluation.held_out_prompts(task, tok, g.prompt_length,
                                                            g.num_eval_prompts, settings.seed,
                                                            g.eval_samples_per_prompt)
    eval_batch = parallel.shard_batch(eval_arrays, mesh)

    def evaluate_state(state: PPOState) -> loop.Evaluation:
        out = parallel.fetch(program.evaluate(state.policy, eval_batch, jax.random.key(1234)))
        responses = decode_rows(tok, out["tokens"], out["mask"])
        rows = [{"prompt": eval_prompts[i], "response": responses[i],
                 "gold": float(out["gold"][i]), "score": float(out["score"][i])}
                for i in range(min(settings.train.num_samples, len(responses)))]
        return evaluation.summarize(out, task, g.eval_samples_per_prompt), rows

    batches = BatchIterator(train_prompts, settings.prompts_drawn_per_iteration,
                            seed=settings.seed)
    loop.run(workdir=workdir, train=settings.train, config=config, mesh=mesh,
             init_state=program.init_state, state_shardings=program.state_shardings,
             step_fn=program.step, batches=batches, evaluate=evaluate_state,
             count_tokens=lambda b: int(b["prompt_mask"].sum()), desc="ppo",
             abstract_state=program.abstract_state,
             progress_keys=("objective/scores", "objective/kl", "objective/gold"))
    rows = read_metrics(workdir)
    evals = [r for r in rows if "eval/gold" in r]
    train_rows = [r for r in rows if "objective/kl" in r]
    summary = {**evaluation.before_after(evals),
               "train_kl": train_rows[-1]["objective/kl"] if train_rows else None,
               "iterations": settings.train.steps, "advantage": p.advantage,
               "data_counts": data_counts}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The iteration as one program, or (``ppo.single_program=False``) each phase, over
    abstract weights and a prompt batch of the config's shape."""
    p = settings.ppo
    policy_cfg = policy_config(settings)
    reward_cfg = trained_config(settings.reward_init) if settings.reward_init else policy_cfg
    policy = abstract_trained(CausalLM, policy_cfg)
    reward = (RewardModel(abstract_trained(ScalarModel, reward_cfg, head_init="normal"), 1.0,
                          0.0) if p.reward_source == "model" else None)
    task = get_task(settings.data.task) if p.reward_source == "gold" else None
    if task is not None:
        policy = dataclasses.replace(policy, tokenizer=task.tokenizer)
    program = build(settings, mesh, policy, reward, task)
    n, length = settings.prompts_drawn_per_iteration, settings.sampling.prompt_length
    fields = {"prompt_ids": ((n, length), jnp.int32), "prompt_mask": ((n, length), jnp.int32)}
    if p.reward_fns:
        fields["prompt_index"] = ((n,), jnp.int32)
    if p.ptx_coef > 0:
        fields.update({k: ((n, settings.data.max_len), jnp.int32) for k in PTX_FIELDS})
    args = (abstract_state(program), program.frozen, abstract_batch(mesh, **fields))
    params = program.abstract_state.policy
    if p.single_program:
        return {"iteration": (program.iterate, args, params)}
    steps, carry = {}, {}
    phases = iteration_phases(models=program.models, settings=p, sampling=settings.sampling,
                              optimizers=make_optimizers(settings))
    for phase, pinned in zip(phases, pinned_phases(phases, program.state_shardings, mesh)):
        steps[phase.__name__] = (pinned, (*args, carry), params)
        state, carry = jax.eval_shape(phase, *args, carry)
        args = (checkpoint.abstract_like(state, program.state_shardings), *args[1:])
    return steps


def headline(summary: dict[str, Any]) -> str:
    """PPO with GAE, else its critic-free estimator's name (GRPO, RLOO, REINFORCE)."""
    advantage = summary.get("advantage", "gae")
    return f"{'PPO' if advantage == 'gae' else advantage.upper()} {gold_line(summary)}"


STAGE = Stage(
    name="ppo", help="PPO (or GRPO / RLOO / REINFORCE) against a reward model, KL to the SFT "
                     "policy", sections=("ppo", "sampling"), train=train, produces="policy",
    reads=("policy", "reward_model"), has_steps=True, headline=headline, dry_run=dry_run,
    check=RunSettings.check_ppo_batches)
