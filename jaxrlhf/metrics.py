"""Metric writers: JSONL always, TensorBoard (tensorboardX, no TensorFlow) optionally."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    try:
        return value.item()
    except AttributeError:
        return value


class MetricWriter:
    """Appends one JSON object per logged step to ``workdir/metrics.jsonl``.

    On resume, ``truncate_after(step)`` drops lines logged after the restored checkpoint, so
    an interrupted-and-resumed run leaves the same file as an uninterrupted one.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(rows)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (for reports, plots and tests)."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]
