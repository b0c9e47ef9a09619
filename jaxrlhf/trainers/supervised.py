"""The supervised train step and its compiled program, shared by SFT and reward modelling.

A stage supplies only its loss: ``loss(graphdef, params, batch) -> (mean loss, {metric:
mean}, count)``. The step accumulates it over micro-batches
(``jaxrlhf.optim.accumulated_gradients``), applies AdamW with the warm-up + cosine schedule,
and logs ``loss``, the loss's metrics, ``grad_norm`` and ``lr``. It is jitted over the mesh
with donated state and explicit shardings (docs/design.md, rule 1).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import optim, parallel
from jaxrlhf.models.build import ParamsInit, abstract_model
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.settings import OptimSettings, TrainSettings

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
Loss = Callable[[nnx.GraphDef, nnx.State, Batch], tuple[jax.Array, Metrics, jax.Array]]


@flax.struct.dataclass
class TrainState:
    """What a supervised stage carries from step to step."""
    step: jax.Array        # int32 scalar
    params: Any            # nnx.State of the model's Params
    opt_state: optax.OptState


def train_step(state: TrainState, batch: Batch, *, loss_fn: optim.LossFn,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum: int, count_metric: str | None) -> tuple[TrainState, Metrics]:
    """One optimizer update on a batch, accumulated over ``grad_accum`` micro-batches: the
    gradient is that of the whole batch's mean loss, whatever the split. ``count_metric``
    names a metric that logs the batch's count (SFT's ``tokens``)."""
    def logged(params, micro):
        loss, metrics, count = loss_fn(params, micro)
        return loss, {**metrics, "loss": loss}, count

    grads, metrics, count = optim.accumulated_gradients(logged, state.params, batch, grad_accum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    if count_metric:
        metrics[count_metric] = count
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def summed_loss(params: nnx.State, batch: Batch, *,
                loss_fn: optim.LossFn) -> tuple[Metrics, jax.Array]:
    """Evaluation sums of one batch: ``{"loss": mean x count, metric: mean x count}`` and
    the count, to be added over batches and divided by the total count."""
    loss, metrics, count = loss_fn(params, batch)
    return {"loss": loss * count, **{k: v * count for k, v in metrics.items()}}, count


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of a supervised stage on one mesh. ``init_state()`` returns the
    placed initial state (parameters from ``init_params``, then the optimizer state made by
    ``start``, a jitted program that takes the parameters as arguments)."""
    graphdef: nnx.GraphDef
    init_state: Callable[[], TrainState]
    abstract_state: Any
    state_shardings: Any
    step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval_sums: Callable[[nnx.State, Batch], tuple[Metrics, jax.Array]]
    start: Callable[[nnx.State], TrainState]


def build(*, loss: Loss, model_cls: Callable[..., nnx.Module], model_config: ModelConfig,
          init_params: ParamsInit, optim_settings: OptimSettings,
          train: TrainSettings, mesh: Mesh, rules: Mapping[str, tuple[str, ...]],
          count_metric: str | None = None, **model_kwargs) -> Program:
    """Jit the step (donated state, explicit shardings) and the evaluation sums for ``mesh``.

    ``init_params(shardings)`` places the starting parameters on the state's parameter
    shardings (random ones are born sharded; imported ones are read onto each device).
    """
    graphdef, abstract_params = abstract_model(model_cls, model_config, **model_kwargs)
    loss_fn = functools.partial(loss, graphdef)
    schedule = optim.warmup_cosine(optim_settings, train.steps)
    optimizer = optim.adamw(optim_settings, schedule)

    def make_state(params: nnx.State) -> TrainState:
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    abstract_state = jax.eval_shape(make_state, abstract_params)
    state_shardings = parallel.state_shardings(abstract_state, mesh, rules)
    start = jax.jit(make_state, in_shardings=(state_shardings.params,),
                    out_shardings=state_shardings, donate_argnums=0)

    def init_state() -> TrainState:
        return start(init_params(state_shardings.params))

    batch_sharding = parallel.batch_sharding(mesh)
    step = parallel.MeshJit(
        mesh, functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer,
                                schedule=schedule, grad_accum=train.grad_accum,
                                count_metric=count_metric),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0)
    eval_sums = parallel.MeshJit(mesh, functools.partial(summed_loss, loss_fn=loss_fn),
                                 in_shardings=(state_shardings.params, batch_sharding))
    return Program(graphdef, init_state, abstract_state, state_shardings, step, eval_sums, start)
