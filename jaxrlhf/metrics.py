"""Metric writers: JSONL always, TensorBoard (tensorboardX, no TensorFlow) and experiment
trackers (``jaxrlhf.trackers``, handed each row through ``send``) optionally.

``metrics.jsonl`` holds what a run computes — the same bytes after any interruption and
resume as in an uninterrupted run (docs/design.md, rule 5). Timing-dependent values
(``perf/*``, e.g. ``perf/tokens_per_sec``) differ between two runs of the same config, so
they go to ``perf.jsonl`` (and TensorBoard) instead. Only process 0 writes
(``jaxrlhf.runfiles``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from jaxrlhf import runfiles

METRICS_FILE = "metrics.jsonl"
PERF_FILE = "perf.jsonl"
PERF_PREFIX = "perf/"


def _plain(value: Any) -> Any:
    try:
        return value.item()
    except AttributeError:
        return value


class MetricWriter:
    """One JSON object per logged step in ``metrics.jsonl`` (and ``perf.jsonl`` for
    timings), exactly once per step across resumes: ``restart()`` for a fresh run,
    ``keep_through(step)`` after restoring the checkpoint of ``step``. ``send(step, row)``,
    when given, gets each row of ``metrics.jsonl`` as it is written (without ``step``)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True,
                 send: Callable[[int, Mapping[str, Any]], None] | None = None):
        self.path = os.path.join(workdir, METRICS_FILE)
        self._send = send
        self._logs = (runfiles.StepLog(self.path),
                      runfiles.StepLog(os.path.join(workdir, PERF_FILE)))
        self._tb = None
        if tensorboard and runfiles.is_writer():
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def restart(self) -> None:
        for log in self._logs:
            log.restart()

    def keep_through(self, step: int) -> None:
        for log in self._logs:
            log.keep_through(step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = {k: _plain(v) for k, v in metrics.items()}
        computed = {k: v for k, v in values.items() if not k.startswith(PERF_PREFIX)}
        timings = {k: v for k, v in values.items() if k.startswith(PERF_PREFIX)}
        for log, row in zip(self._logs, (computed, timings)):
            if row:
                log.append([{"step": int(step), **row}])
        if computed and self._send is not None:
            self._send(int(step), computed)
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (for reports, plots and tests)."""
    return runfiles.StepLog(os.path.join(workdir, METRICS_FILE)).rows()
