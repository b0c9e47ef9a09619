"""Optimisation: learning-rate schedules, optimizers, and exact gradient accumulation.

Every stage computes its gradient with :func:`accumulated_gradients` and applies it with an
optax chain built here, so "how a gradient is formed and applied" has one place.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrlhf.sections import OptimSettings, PPOSettings

Metrics = dict[str, jax.Array]
# (params, micro-batch) -> (mean loss, {metric: mean}, count): the means are over ``count``
# units (tokens, pairs) of the micro-batch, as the loss's paper defines them.
LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, Metrics, jax.Array]]


def warmup_cosine(optim: OptimSettings, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``end_lr_ratio`` of it."""
    peak = optim.learning_rate
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * optim.end_lr_ratio)


def _clipped(grad_clip: float, *transforms: optax.GradientTransformation):
    """Global-norm clipping at ``grad_clip`` (0 disables it), then ``transforms``."""
    clip = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*clip, *transforms)


def adamw(optim: OptimSettings, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW (the supervised stages' optimizer: SFT,
    reward modelling, DPO)."""
    return _clipped(optim.grad_clip, optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))


def tf_style_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam as TensorFlow computes it: epsilon not scaled by the bias correction.

    TF's update ``lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`` equals PyTorch/optax
    Adam with ``eps_t = eps / sqrt(1 - b2^t)``. lm-human-preferences used it; Huang et al.
    (2023, "N Implementation Details", detail 12) found PyTorch-style Adam gives several
    times larger approx-KL and clip fraction early on (docs/design.md, PPO detail 16).
    """
    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=jax.tree.map(jnp.zeros_like, params),
                                      nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        t = count.astype(jnp.float32)
        eps_t = eps / jnp.sqrt(1 - b2 ** t)
        out = jax.tree.map(
            lambda m, v: (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps_t), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def ppo_adam(optim: OptimSettings, ppo: PPOSettings,
             total_updates: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """PPO's optimizer: clipping, Adam with eps ``optim.eps`` (PPO detail 16: 1e-5; TF-style
    with ``ppo.tf_adam``), and ``optim.learning_rate`` annealed linearly to 0 over
    ``total_updates`` (PPO detail 17). Returns the optimizer and its schedule."""
    schedule = optax.linear_schedule(optim.learning_rate, 0.0, max(total_updates, 1))
    adam = (tf_style_adam(optim.b1, optim.b2, optim.eps) if ppo.tf_adam
            else optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    return _clipped(optim.grad_clip, adam, optax.scale_by_learning_rate(schedule)), schedule


def updates_applied(opt_state: optax.OptState) -> jax.Array:
    """The number of updates an optax chain with one Adam has applied (its Adam count)."""
    states = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    return next(s.count for s in states if isinstance(s, optax.ScaleByAdamState))


def accumulated_gradients(loss_fn: LossFn, params: Any, batch: Mapping[str, jax.Array],
                          num_micro: int) -> tuple[Any, Metrics, jax.Array]:
    """Gradient and metrics of the whole batch's mean loss, over ``num_micro`` micro-batches.

    Each micro-batch's means are weighted by its count (tokens, pairs) and the sums divided
    by the batch's count, so the result equals the full batch's mean loss and gradient
    whatever the split. Micro-batch ``i`` takes rows ``i, i + A, i + 2A, ...`` so each keeps
    the batch's data-parallel sharding; the loop is a ``lax.scan``.

    Returns ``(gradient, {metric: batch mean}, count)``.
    """
    def summed(p, micro):
        loss, metrics, count = loss_fn(p, micro)
        return loss * count, ({k: v * count for k, v in metrics.items()}, count)

    grad_fn = jax.grad(summed, has_aux=True)
    if num_micro == 1:
        grads, (sums, count) = grad_fn(params, batch)
    else:
        def split(x):  # [batch, ...] -> [num_micro, batch / num_micro, ...]
            x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
            return jnp.swapaxes(x, 0, 1)

        micro_batches = jax.tree.map(split, dict(batch))

        def body(carry, micro):
            return jax.tree.map(jnp.add, carry, grad_fn(params, micro)), None

        first = jax.tree.map(lambda x: x[0], micro_batches)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first))
        (grads, (sums, count)), _ = jax.lax.scan(body, zeros, micro_batches)
    norm = jnp.maximum(count, 1.0)
    return (jax.tree.map(lambda g: g / norm, grads), {k: v / norm for k, v in sums.items()},
            count)
