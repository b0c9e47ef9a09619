"""The one imperative shell shared by every stage: resume, log, evaluate, checkpoint.

A stage supplies a pure jitted ``step(state, batch) -> (state, metrics)``, a function that
builds its initial state, and an ``evaluate(state)``. This loop does only what cannot be
pure (DESIGN.md): reading batches, fetching metrics once per log interval, writing
checkpoints, the progress bar. Killing it at any moment and re-running the same command
resumes from the newest checkpoint with the data iterator where it was, bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxrlhf import checkpoint, parallel
from jaxrlhf.metrics import MetricWriter

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """What a supervised stage (SFT, reward model) carries from step to step."""
    step: jax.Array        # int32 scalar
    params: Any            # nnx.State of the model's Params
    opt_state: optax.OptState


def accumulate_gradients(loss_fn: Callable[[Any, Batch], tuple[jax.Array, Any]], params: Any,
                         batch: Batch, num_micro: int) -> tuple[Any, Any]:
    """Sum of gradients and auxiliary sums over ``num_micro`` micro-batches (a ``lax.scan``).

    ``loss_fn(params, micro) -> (summed_loss, aux_sums)`` must return *sums* (not means) so
    that the caller can normalise by the whole batch's count and get exactly the full-batch
    gradient. Micro-batch ``i`` takes rows ``i, i + A, i + 2A, ...`` so each micro-batch
    keeps the batch's data-parallel sharding.
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if num_micro == 1:
        grads, aux = grad_fn(params, batch)
        return grads, aux

    def split(x):  # [batch, ...] -> [num_micro, batch / num_micro, ...]
        x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    micro_batches = jax.tree.map(split, dict(batch))

    def body(carry, micro):
        grads, aux = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (grads, aux)), None

    zeros = jax.tree.map(jnp.zeros_like,
                         jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches)))
    (grads, aux), _ = jax.lax.scan(body, zeros, micro_batches)
    return grads, aux


def _check_finite(step: int, metrics: Mapping[str, float], ckpt: checkpoint.Checkpointer):
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            ckpt.wait()
            raise FloatingPointError(
                f"step {step}: metric {key!r} is {value}; stopping. The last good checkpoint "
                f"is step {ckpt.latest_step()} in {ckpt.directory}.")


def _host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str)


def run(*, workdir: str, config: ml_collections.ConfigDict, mesh: Mesh,
        init_state: Callable[[], Any], state_shardings: Any,
        step_fn: Callable[[Any, Batch], tuple[Any, Metrics]], batches: Any,
        evaluate: Callable[[Any], Mapping[str, float]],
        count_tokens: Callable[[Mapping[str, np.ndarray]], int],
        desc: str) -> Any:
    """Train ``config.train.steps`` steps from scratch or from the newest checkpoint.

    ``batches`` is a checkpointable iterator (``get_state`` / ``set_state``) of host
    batches; ``count_tokens`` counts the real tokens of one for the tokens/s figure.
    Returns the final state.
    """
    t = config.train
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   keep=t.keep_checkpoints)
    writer = MetricWriter(workdir, tensorboard=t.tensorboard)
    latest = ckpt.latest_step()
    if latest is None:
        write_config(workdir, config)
        state = jax.jit(init_state, out_shardings=state_shardings)()
        start = 0
        writer.write(0, evaluate(state))
    else:
        target = checkpoint.abstract_like(jax.eval_shape(init_state), state_shardings)
        state, extras = ckpt.restore(latest, target, ("data",))
        batches.set_state(extras["data"])
        writer.truncate_after(latest)
        start = latest
        print(f"[{desc}] resuming from step {latest} in {ckpt.directory}")

    bar = tqdm(total=t.steps, initial=start, desc=desc, dynamic_ncols=True,
               disable=os.environ.get("JAXRLHF_NO_PROGRESS") == "1")
    tokens, tick = 0, time.perf_counter()
    end = min(t.steps, start + t.run_steps) if t.run_steps else t.steps
    for step in range(start + 1, end + 1):
        host_batch = next(batches)
        state, metrics = step_fn(state, parallel.shard_batch(host_batch, mesh))
        tokens += count_tokens(host_batch)
        bar.update(1)
        row: dict[str, float] = {}
        last = step == t.steps
        if step % t.log_every == 0 or last:
            row.update(_host_scalars(metrics))
            elapsed = time.perf_counter() - tick
            row["perf/tokens_per_sec"] = tokens / elapsed
            tokens, tick = 0, time.perf_counter()
            _check_finite(step, row, ckpt)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                            tok_s=f"{row['perf/tokens_per_sec']:.0f}")
        if step % t.eval_every == 0 or last:
            row.update(evaluate(state))
            tick = time.perf_counter()  # evaluation time is not training throughput
        if row:
            writer.write(step, row)
        if step % t.checkpoint_every == 0 or step == end:
            ckpt.save(step, state, {"data": batches.get_state(), "config": config.to_dict()})
    bar.close()
    ckpt.close()
    writer.close()
    return state
