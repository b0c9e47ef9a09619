"""The one imperative shell shared by every stage: resume, log, evaluate, checkpoint.

A stage supplies a pure jitted ``step(state, batch) -> (state, metrics)``, a function that
builds its initial state, and an ``evaluate(state)``. This loop does only what cannot be
pure (docs/design.md): reading batches, fetching metrics once per log interval, writing
checkpoints, the progress bar. Killing it at any moment and re-running the same command
resumes from the newest intact checkpoint with the data iterator where it was, bit for bit,
and leaves ``metrics.jsonl`` and ``samples.jsonl`` byte-identical to an uninterrupted
run's: a fresh start empties them, a resume cuts them back to the restored step.

The loop hands each metrics row to the experiment trackers the config names
(``jaxrlhf.trackers``): a fresh start opens new tracker runs, a resume continues them.

With ``train.best_metric`` the loop also keeps the state of the best evaluation so far in
``WORKDIR/best`` (:class:`_Best`) and returns it at the end: early stopping by checkpoint
selection, so a reward model whose held-out loss rises after step k hands on step k.

A NaN or infinity — in a logged metric, an evaluation, or the state about to be
checkpointed — stops the run with ``DivergedError`` naming the last good checkpoint, which
by construction holds only finite values.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxrlhf import checkpoint, parallel, runfiles, trackers as trackers_lib
from jaxrlhf import workdir as workdir_lib
from jaxrlhf.errors import ConfigError, DivergedError
from jaxrlhf.metrics import PERF_PREFIX, MetricWriter, read_metrics
from jaxrlhf.sections import TrainSettings

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
# What ``evaluate`` returns: its metrics, or its metrics and sample rows for samples.jsonl.
Evaluation = Mapping[str, float] | tuple[Mapping[str, float], Sequence[Mapping[str, Any]]]
# Config fields that fix the shapes of a run's state or the weights it starts from (a
# prefix ends with a dot): a checkpoint is never resumed under other values of them.
STATE_FIELDS = ("model.", "lora.rank", "lora.targets", "model_init", "policy_init",
                "reward_init", "data.tokenizer", "data.bpe_vocab_size", "ppo.value_init",
                "ppo.advantage")


def _check_finite(step: int, row: Mapping[str, float], ckpt: checkpoint.Checkpointer):
    bad = [key for key, value in row.items()
           if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise DivergedError(f"step {step}: {', '.join(f'{k}={row[k]}' for k in bad)} is not "
                            f"finite; stopping, and {ckpt.last_good()}")


def _host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming each :data:`STATE_FIELDS` field whose value in the run's
    ``config.json`` differs from ``config``'s (``model.d_model: 64 in the run, 32 now``):
    checked before a checkpoint is read, whose restore would otherwise fail array by array.
    Other fields (``train.run_steps``, logging, ...) may change between invocations."""
    if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
        return
    saved = trackers_lib.flatten(workdir_lib.read_json(workdir, workdir_lib.CONFIG_FILE))
    now = trackers_lib.flatten(json.loads(json.dumps(config.to_dict())))
    changed = [f"{name}: {saved.get(name)!r} in the run, {now.get(name)!r} now"
               for name in sorted(saved.keys() | now.keys())
               if name.startswith(STATE_FIELDS) and saved.get(name) != now.get(name)]
    if changed:
        raise ConfigError(f"{workdir} holds a run whose state this config would shape or "
                          f"start differently ({'; '.join(changed)}): resume it with the "
                          "run's values, or start a new --workdir")


class _Logs:
    """The run's step logs: metrics (+ perf timings, + the experiment trackers) and decoded
    samples."""

    def __init__(self, workdir: str, tensorboard: bool, config: ml_collections.ConfigDict,
                 stage: str):
        self.config = config
        self.trackers = trackers_lib.Trackers.of(config, workdir, stage)
        self.metrics = MetricWriter(workdir, tensorboard=tensorboard, send=self.trackers.log)
        self.samples = runfiles.StepLog(os.path.join(workdir, workdir_lib.SAMPLES_FILE))

    def restart(self) -> None:
        self.metrics.restart()
        self.samples.restart()
        self.trackers.start(self.config, resume=False)

    def keep_through(self, step: int) -> None:
        self.metrics.keep_through(step)
        self.samples.keep_through(step)
        self.trackers.start(self.config, resume=True)

    def close(self) -> None:
        self.metrics.close()
        self.trackers.close()

    def evaluation(self, step: int, result: Evaluation) -> Mapping[str, float]:
        """Log an evaluation's sample rows; return its metrics."""
        if isinstance(result, tuple):
            result, rows = result
            self.samples.append({"step": step, **row} for row in rows)
        return result


class _Best:
    """The best evaluation so far by ``train.best_metric`` and its state in ``WORKDIR/best``.

    Resuming recovers the best value from the metrics kept through the restored step. A
    best state saved past that step (the run died between it and the next checkpoint) is
    the one the bit-identical replay reaches again, so the directory only takes states
    newer than the one it holds.
    """

    def __init__(self, workdir: str, train: TrainSettings):
        self.metric, self.sign = train.best_metric, 1.0 if train.best_mode == "min" else -1.0
        self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, workdir_lib.BEST_DIR),
                                            keep=1)
        self.value = math.inf

    def resume(self, workdir: str, step: int) -> None:
        for row in read_metrics(workdir):
            if row["step"] <= step and self.metric in row:
                self.value = min(self.value, self.sign * row[self.metric])

    def offer(self, step: int, evaluation: Mapping[str, float], state: Any) -> None:
        if self.metric not in evaluation:
            raise ConfigError(f"config.train.best_metric={self.metric!r} is not reported by "
                              f"this stage's evaluation; it reports {sorted(evaluation)}")
        value = self.sign * evaluation[self.metric]
        if value < self.value:
            self.value = value
            if step > (self.ckpt.latest_step() if self.ckpt.latest_step() is not None else -1):
                self.ckpt.save(step, state, {})

    def state(self, target: Any) -> Any:
        self.ckpt.wait()
        return self.ckpt.restore(self.ckpt.latest_step(), target, ())[0]


def _bar_text(row: Mapping[str, float], keys: Sequence[str]) -> dict[str, str]:
    shown = {key.rsplit("/", 1)[-1]: f"{row[key]:.4g}" for key in keys if key in row}
    shown["tok_s"] = f"{row[PERF_PREFIX + 'tokens_per_sec']:.0f}"
    return shown


def run(*, workdir: str, train: TrainSettings, config: ml_collections.ConfigDict, mesh: Mesh,
        init_state: Callable[[], Any], state_shardings: Any,
        step_fn: Callable[[Any, Batch], tuple[Any, Metrics]], batches: Any,
        evaluate: Callable[[Any], Evaluation],
        count_tokens: Callable[[Mapping[str, np.ndarray]], int],
        desc: str, abstract_state: Any, progress_keys: Sequence[str] = ("loss",)) -> Any:
    """Train ``train.steps`` steps from scratch or from the newest intact checkpoint.

    ``batches`` is a checkpointable iterator (``get_state`` / ``set_state``) of host
    batches; ``count_tokens`` counts the real tokens of one for the tokens/s figure;
    ``evaluate`` returns metrics, or ``(metrics, sample rows)`` to log in samples.jsonl;
    ``progress_keys`` are the metrics the progress bar shows; ``config`` is recorded in
    ``config.json`` and every checkpoint. ``init_state()`` returns the initial state (a
    stage's own jitted program places it, so imported weights are never constants of a
    compiled program); ``abstract_state``, its shapes, is the restore target. Returns the
    final state, or with ``train.best_metric`` (once the run is complete) the best one.
    """
    t = train
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
                                   keep=t.keep_checkpoints)
    logs = _Logs(workdir, t.tensorboard, config, desc)
    target = checkpoint.abstract_like(abstract_state, state_shardings)
    best = _Best(workdir, t) if t.best_metric else None
    if ckpt.latest_step() is not None:
        check_resumable(workdir, config)
    restored = ckpt.restore_newest(target, ("data",), say=lambda m: print(f"[{desc}] {m}"))
    if restored is None:
        logs.restart()
        if best is not None:
            best.ckpt.clear()
        workdir_lib.write_config(workdir, config)
        state = init_state()
        start = 0
        row = dict(logs.evaluation(0, evaluate(state)))
        _check_finite(0, row, ckpt)
        logs.metrics.write(0, row)
        if best is not None:
            best.offer(0, row, state)
    else:
        start, state, extras = restored
        batches.set_state(extras["data"])
        logs.keep_through(start)
        if best is not None:
            best.resume(workdir, start)
        print(f"[{desc}] resuming from step {start} in {ckpt.directory}")

    bar = tqdm(total=t.steps, initial=start, desc=desc, dynamic_ncols=True,
               disable=os.environ.get("JAXRLHF_NO_PROGRESS") == "1" or not runfiles.is_writer())
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
            row[PERF_PREFIX + "tokens_per_sec"] = tokens / elapsed
            tokens, tick = 0, time.perf_counter()
            _check_finite(step, row, ckpt)
            bar.set_postfix(_bar_text(row, progress_keys))
        if step % t.eval_every == 0 or last:
            evaluation = logs.evaluation(step, evaluate(state))
            _check_finite(step, evaluation, ckpt)
            if best is not None:
                best.offer(step, evaluation, state)
            row.update(evaluation)
            tick = time.perf_counter()  # evaluation time is not training throughput
        if row:
            logs.metrics.write(step, row)
        if step % t.checkpoint_every == 0 or step == end:
            ckpt.save(step, state, {"data": batches.get_state(), "config": config.to_dict()})
    bar.close()
    ckpt.close()
    logs.close()
    runfiles.barrier(f"{desc}:logs")  # every process may now read what process 0 wrote
    if best is not None:
        if end == t.steps:
            state = best.state(target)
        best.ckpt.close()
    return state
