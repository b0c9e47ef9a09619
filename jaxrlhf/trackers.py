"""Experiment trackers beside ``metrics.jsonl``: Weights & Biases and MLflow, both optional.

``--config.logging.wandb_project=NAME`` and ``--config.logging.mlflow_uri=URI``
(``jaxrlhf.sections.LoggingSettings``) each open one tracker run per run of a stage, which
gets:

* the rows of ``metrics.jsonl`` at their steps, each once, as the loop writes them
  (``MetricWriter``'s ``send``; the ``perf/*`` timings stay out, as they stay out of that
  file); MLflow's names have each character it refuses as ``_`` (``eval/pass@1`` ->
  ``eval/pass_1``);
* the flattened config (``train.steps``, ...), when its tracker run is created;
* the stage's summary as ``summary/*`` and its PNG figures (``WORKDIR/*.png``,
  ``WORKDIR/figures/*.png``), when the stage finishes (``jaxrlhf.pipeline.run_stage``, which
  the command line and ``jaxrlhf.run`` go through).

W&B keeps its files (an offline run's, with ``WANDB_MODE=offline``) in ``WORKDIR/wandb``;
an ``http(s)://`` MLflow server is first tried for :data:`CONNECT_TIMEOUT_S` seconds, as
MLflow itself would retry an unreachable one for minutes. Only process 0 sends.

``WORKDIR/trackers.json`` keeps each tracker's run id, where it sends and the last step it
has had, so a resumed run continues the same tracker run (W&B: ``resume="allow"``), the
steps a resume replays are not sent again, and the rows kept in ``metrics.jsonl`` that a
tracker has not had (it failed, or is named only now) are sent when it opens; a run that
starts again from step 0 opens new tracker runs. A tracker that fails (not installed,
unreachable, refused) prints one line naming it, why and what to do, and is skipped for
the rest of the process: a tracker never stops training.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxrlhf import runfiles
from jaxrlhf.metrics import read_metrics
from jaxrlhf.sections import LoggingSettings
from jaxrlhf.settings import logging_settings

STATE_FILE = "trackers.json"
FIGURE_PATTERNS = ("*.png", os.path.join("figures", "*.png"))
SUMMARY_PREFIX = "summary/"
CONNECT_TIMEOUT_S = 5.0   # MLflow itself retries an unreachable server for minutes
_FAILED: set[str] = set()   # the trackers (name and destination) that failed in this process


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted name: value}`` of a nested mapping's leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (what a tracker plots), without its ``step``."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}


def figure_paths(workdir: str) -> dict[str, str]:
    """``{name relative to the workdir: path}`` of the PNG figures in ``workdir``."""
    return {os.path.relpath(path, workdir): path for pattern in FIGURE_PATTERNS
            for path in sorted(glob.glob(os.path.join(glob.escape(workdir), pattern)))}


def mlflow_name(name: str) -> str:
    """``name`` with each character MLflow refuses in a metric or param name as ``_``."""
    return re.sub(r"[^\w./\- ]", "_", name)


def check_reachable(uri: str) -> None:
    """Raise OSError when the host of an ``http(s)://`` URI does not accept a connection
    within :data:`CONNECT_TIMEOUT_S`."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()


class WandbTracker:
    """A Weights & Biases run, its files in ``WORKDIR/wandb``."""
    name = "wandb"
    install = "pip install -e '.[wandb]'"
    remedy = ("check config.logging.wandb_project and wandb_entity and run `wandb login`, "
              "or set WANDB_MODE=offline")

    def __init__(self, settings: LoggingSettings):
        self.settings = settings
        self.destination = "/".join(filter(None, (settings.wandb_entity, settings.wandb_project)))
        self.run: Any = None
        self.run_id = ""

    def open(self, workdir: str, run_id: str | None, stage: str,
             config: Mapping[str, Any] | None) -> None:
        """Continue the run ``run_id``, or start one (given ``config``)."""
        import wandb
        s = self.settings
        os.makedirs(workdir, exist_ok=True)
        self.run = wandb.init(project=s.wandb_project, entity=s.wandb_entity or None,
                              name=s.wandb_run_name or None, tags=list(s.tags) or None,
                              job_type=stage, dir=workdir, id=run_id, resume="allow",
                              config=dict(config) if config is not None else None)
        self.run_id = self.run.id

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, Any], figures: Mapping[str, str], step: int) -> None:
        """The summary and figures into the run's summary (which has no ``step``)."""
        import wandb
        self.run.summary.update({SUMMARY_PREFIX + k: v for k, v in flatten(summary).items()})
        for name, path in figures.items():
            stem = os.path.splitext(os.path.basename(name))[0]
            self.run.summary[f"figures/{stem}"] = wandb.Image(path)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in the experiment ``logging.mlflow_experiment`` of the tracking store
    ``logging.mlflow_uri``."""
    name = "mlflow"
    install = "pip install -e '.[mlflow]'"
    remedy = ("check config.logging.mlflow_uri: a running tracking server, or file:DIR with "
              "MLFLOW_ALLOW_FILE_STORE=true (MLflow 3 refuses file stores without it)")

    def __init__(self, settings: LoggingSettings):
        self.uri, self.experiment = settings.mlflow_uri, settings.mlflow_experiment or "Default"
        self.destination = f"{self.uri}, experiment {self.experiment}"
        self.client: Any = None
        self.run_id = ""

    def open(self, workdir: str, run_id: str | None, stage: str,
             config: Mapping[str, Any] | None) -> None:
        """Continue the run ``run_id``, or start one (given ``config``)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        check_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment = (found.experiment_id if found is not None
                          else self.client.create_experiment(self.experiment))
            tags = {"jaxrlhf.stage": stage, "jaxrlhf.workdir": os.path.abspath(workdir)}
            run_id = self.client.create_run(experiment, tags=tags).info.run_id
            self.client.log_batch(run_id, params=[Param(mlflow_name(k), str(v))
                                                  for k, v in (config or {}).items()])
        self.run_id = run_id

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_name(k), v, now, step)
                                                    for k, v in values.items()])

    def finish(self, summary: Mapping[str, Any], figures: Mapping[str, str], step: int) -> None:
        """The summary's numbers as metrics at ``step`` (the last the run has had), the whole
        summary as the artifact ``summary.json``, the figures under ``figures/``."""
        flat = numbers(flatten(summary))
        self.log(step, {SUMMARY_PREFIX + k: v for k, v in flat.items()})
        self.client.log_dict(self.run_id, json.loads(json.dumps(summary, default=str)),
                             "summary.json")
        for path in figures.values():
            self.client.log_artifact(self.run_id, path, "figures")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


Tracker = WandbTracker | MlflowTracker


def configured(settings: LoggingSettings) -> list[Tracker]:
    """The trackers ``settings`` names."""
    return ([WandbTracker(settings)] if settings.wandb_project else []) + (
        [MlflowTracker(settings)] if settings.mlflow_uri else [])


def _key(tracker: Tracker) -> str:
    return f"{tracker.name} {tracker.destination}"


class Trackers:
    """The tracker runs of one run of a stage in ``workdir`` (none on processes other than
    0): :meth:`start` opens them, :meth:`log` sends a metrics row, :meth:`finish` the
    summary and figures, :meth:`close` ends them. A tracker whose call fails is warned
    about once and dropped (:meth:`_guarded`)."""

    def __init__(self, settings: LoggingSettings, workdir: str, stage: str):
        self.workdir, self.stage = workdir, stage
        self.path = os.path.join(workdir, STATE_FILE)
        self.pending = ([t for t in configured(settings) if _key(t) not in _FAILED]
                        if runfiles.is_writer() else [])
        self.open: list[Tracker] = []
        self.state: dict[str, dict[str, Any]] = {}   # tracker name -> run id, destination, sent

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, workdir: str, stage: str) -> Trackers:
        """The trackers of a stage's ``config`` (its ``logging`` section)."""
        return cls(logging_settings(config), workdir, stage)

    def start(self, config: ml_collections.ConfigDict, *, resume: bool) -> None:
        """Open each tracker's run — with ``resume``, the one ``trackers.json`` names when
        it sends to the same place, else a new one, which gets the flattened config — and
        send it the rows of ``metrics.jsonl`` it has not had."""
        if not self.pending:
            return
        if resume and os.path.exists(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
        settings = {k: v for k, v in flatten(config.to_dict()).items() if v is not None}
        for tracker in self.pending:
            saved = self.state.get(tracker.name)
            if saved is not None and saved["destination"] != tracker.destination:
                saved = None
            if self._guarded(tracker, lambda: tracker.open(
                    self.workdir, saved and saved["run_id"], self.stage,
                    None if saved else settings)):
                self.open.append(tracker)
                self.state[tracker.name] = {
                    "run_id": tracker.run_id, "destination": tracker.destination,
                    "sent_through": saved["sent_through"] if saved else -1}
        self.pending = []
        if self.open:
            self._save()
        for row in read_metrics(self.workdir):
            self.log(row["step"], row)

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        """Send one ``metrics.jsonl`` row to each open tracker that has not had its step."""
        values, sent = numbers(row), False
        for tracker in list(self.open):
            record = self.state[tracker.name]
            if step > record["sent_through"] and values and self._guarded(
                    tracker, lambda: tracker.log(step, values)):
                record["sent_through"], sent = step, True
        if sent:
            self._save()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Send the stage's summary and the figures in its workdir, and end the runs."""
        figures = figure_paths(self.workdir)
        for tracker in list(self.open):
            step = max(self.state[tracker.name]["sent_through"], 0)
            self._guarded(tracker, lambda: tracker.finish(summary, figures, step))
        self.close()

    def close(self) -> None:
        """End every open tracker run."""
        for tracker in list(self.open):
            self._guarded(tracker, tracker.close)
        self.open = []

    def _guarded(self, tracker: Tracker, call: Callable[[], None]) -> bool:
        """Whether ``call()`` returned; when it raised, one line on stderr names the tracker,
        the error and its fix, and the tracker is dropped for the rest of the process."""
        try:
            call()
            return True
        except Exception as error:  # no tracker error may stop training
            _FAILED.add(_key(tracker))
            if tracker in self.open:
                self.open.remove(tracker)
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            fix = tracker.install if isinstance(error, ImportError) else tracker.remedy
            print(f"jaxrlhf: warning: the {tracker.name} tracker ({tracker.destination}) "
                  f"failed and is off for the rest of this process: {reason}; to fix: {fix}",
                  file=sys.stderr)
            return False

    def _save(self) -> None:
        runfiles.write_json(self.path, self.state)


def report(config: ml_collections.ConfigDict, workdir: str, stage: str,
           summary: Mapping[str, Any]) -> None:
    """After a stage finished: continue its tracker runs (or open them, for a stage without
    the loop, such as best-of-n), send the rows not sent yet, the summary and the figures,
    and end the runs."""
    group = Trackers.of(config, workdir, stage)
    group.start(config, resume=True)
    group.finish(summary)
