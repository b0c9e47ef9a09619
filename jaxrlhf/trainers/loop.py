"""The one imperative shell shared by every stage: resume, log, evaluate, checkpoint.

A stage supplies a pure jitted ``step(state, batch) -> (state, metrics)``, a function that
builds its initial state, and an ``evaluate(state)``. This loop does only what cannot be
pure (docs/design.md): reading batches, fetching metrics once per log interval, writing
checkpoints, the progress bar. Killing it at any moment and re-running the same command
resumes from the newest checkpoint with the data iterator where it was, bit for bit.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxrlhf import checkpoint, parallel, workdir as workdir_lib
from jaxrlhf.metrics import MetricWriter
from jaxrlhf.settings import TrainSettings

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def _check_finite(step: int, metrics: Mapping[str, float], ckpt: checkpoint.Checkpointer):
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            ckpt.wait()
            raise FloatingPointError(
                f"step {step}: metric {key!r} is {value}; stopping. The last good checkpoint "
                f"is step {ckpt.latest_step()} in {ckpt.directory}.")


def _host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def run(*, workdir: str, train: TrainSettings, config: ml_collections.ConfigDict, mesh: Mesh,
        init_state: Callable[[], Any], state_shardings: Any,
        step_fn: Callable[[Any, Batch], tuple[Any, Metrics]], batches: Any,
        evaluate: Callable[[Any], Mapping[str, float]],
        count_tokens: Callable[[Mapping[str, np.ndarray]], int],
        desc: str, abstract_state: Any = None) -> Any:
    """Train ``train.steps`` steps from scratch or from the newest checkpoint.

    ``batches`` is a checkpointable iterator (``get_state`` / ``set_state``) of host
    batches; ``count_tokens`` counts the real tokens of one for the tokens/s figure;
    ``config`` is recorded in ``config.json`` and every checkpoint. ``init_state()`` returns
    the initial state (a stage's own jitted program places it, so imported weights are never
    constants of a compiled program); ``abstract_state``, its shapes, is the restore target
    (``jax.eval_shape(init_state)`` when not given). Returns the final state.
    """
    t = train
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
                                   keep=t.keep_checkpoints)
    writer = MetricWriter(workdir, tensorboard=t.tensorboard)
    latest = ckpt.latest_step()
    if latest is None:
        workdir_lib.write_config(workdir, config)
        state = jax.device_put(init_state(), state_shardings)
        start = 0
        writer.write(0, evaluate(state))
    else:
        abstract = jax.eval_shape(init_state) if abstract_state is None else abstract_state
        target = checkpoint.abstract_like(abstract, state_shardings)
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
