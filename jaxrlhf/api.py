"""The Python API for notebooks and scripts: load a config, run a stage, sweep a grid.

::

    import jaxrlhf
    config = jaxrlhf.load_config("configs/ppo/quickstart.py", **{"ppo.kl_coef": 0.1})
    result = jaxrlhf.run("ppo", config, "runs/ppo")            # summary, metrics, paths
    table = jaxrlhf.sweep("ppo", config, {"ppo.kl_coef": [0.02, 0.1], "seed": [0, 1, 2]},
                          "runs/kl_sweep")                    # one row per point
    sft = jaxrlhf.run_once("sft", config, "runs/shared_sft")  # reused while the config matches

Everything runs in this process through the same stage shells as ``python -m jaxrlhf``;
nothing shells out. A run resumes from its workdir, so re-running a notebook cell finishes
what was interrupted and reuses what finished.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import pandas as pd
from tqdm.auto import tqdm

from jaxrlhf import config as config_lib, pipeline, runfiles, stages as stages_lib
from jaxrlhf import workdir as workdir_lib
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import METRICS_FILE, read_metrics

COMMANDS = (*stages_lib.STAGES, stages_lib.PIPELINE)
POINT_FILE = "sweep_point.json"
# Fields that say how an invocation runs, not what it computes: a sweep point may be
# resumed with other values.
INVOCATION_FIELDS = ("train.run_steps", "train.tensorboard")


def load_config(path: str, **overrides: Any) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``path``, locked, with dotted ``overrides``
    applied as ``--config.NAME=VALUE`` would (``load_config(p, **{"ppo.kl_coef": 0.1})``).
    A misspelt name is an error that suggests the closest fields."""
    config = config_lib.load_config_file(path)
    config.lock()
    for name, value in overrides.items():
        config_lib.override(config, name, value)
    return config


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted ``overrides`` applied (``config`` is not changed)."""
    config = copy.deepcopy(config)
    for name, value in overrides.items():
        config_lib.override(config, name, value)
    return config


@dataclasses.dataclass(frozen=True)
class Result:
    """What a finished stage (or pipeline) left in its workdir."""
    stage: str
    workdir: str
    summary: dict[str, Any]
    metrics: pd.DataFrame       # one row per logged step (pipeline: a ``stage`` column)

    def samples(self) -> pd.DataFrame:
        """The decoded samples the stage logged (``samples.jsonl``), one row each."""
        stage_dir = os.path.join(self.workdir, "ppo") if self.stage == "pipeline" else self.workdir
        path = os.path.join(stage_dir, workdir_lib.SAMPLES_FILE)
        if not os.path.exists(path):
            return pd.DataFrame()
        with open(path) as f:
            return pd.DataFrame([json.loads(line) for line in f if line.strip()])

    @property
    def report(self) -> str | None:
        """The pipeline's ``report.md``, if this is a pipeline run."""
        path = os.path.join(self.workdir, "report.md")
        return path if os.path.exists(path) else None


def _metrics_frame(workdir: str) -> pd.DataFrame:
    if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
        return pd.DataFrame()
    return pd.DataFrame(read_metrics(workdir))


def load_result(stage: str, workdir: str) -> Result:
    """The :class:`Result` of a finished run in ``workdir`` (without running anything)."""
    if stage not in COMMANDS:
        raise ConfigError(f"stage {stage!r} is not one of {COMMANDS}")
    summary = workdir_lib.read_json(workdir, workdir_lib.SUMMARY_FILE)
    if stage == stages_lib.PIPELINE:
        frames = [_metrics_frame(os.path.join(workdir, name)).assign(stage=name)
                  for name in summary.get("stages", stages_lib.DEFAULT_PIPELINE)]
        metrics = pd.concat(frames, ignore_index=True)
    else:
        metrics = _metrics_frame(workdir)
    return Result(stage, workdir, summary, metrics)


def run(stage: str, config: ml_collections.ConfigDict, workdir: str) -> Result:
    """Run (or resume) ``stage`` (a stage of ``jaxrlhf.stages.STAGES`` or "pipeline") with
    ``config`` in ``workdir``, in this process; validates the config first."""
    stages_lib.validate(stage, config, jax.device_count())
    pipeline.run(stage, config, workdir)
    return load_result(stage, workdir)


def point_name(overrides: Mapping[str, Any]) -> str:
    """A directory name for one sweep point: ``ppo.kl_coef=0.1,seed=2``."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()).replace(os.sep, "_")


def _flat(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def sweep(stage: str, config: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]],
          workdir: str, *, progress: bool = True) -> pd.DataFrame:
    """Run ``stage`` at every point of ``grid`` (the product of its dotted fields' values),
    each in ``workdir/<point_name>``; return one row per point: the grid's values, the
    flattened summary and the point's workdir.

    Finished points are read back, interrupted ones resume. A point directory that holds
    the results of a different config is an error, never mixed into the table.
    """
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    rows = []
    for overrides in tqdm(points, desc=f"sweep {stage}", disable=not progress
                          or os.environ.get("JAXRLHF_NO_PROGRESS") == "1"):
        point_dir = os.path.join(workdir, point_name(overrides))
        result = run_once(stage, with_overrides(config, overrides), point_dir, overrides)
        rows.append({**overrides, **_flat(result.summary), "workdir": point_dir})
    return pd.DataFrame(rows)


def run_once(stage: str, config: ml_collections.ConfigDict, workdir: str,
             overrides: Mapping[str, Any] | None = None) -> Result:
    """:func:`run`, unless ``workdir`` already holds the finished run of this config: then
    its result is read back without compiling anything. A ``workdir`` that holds a run of a
    different config is an error, so shared runs (one SFT policy for many experiments) are
    reused only when they are what was asked for. ``overrides`` are recorded with it."""
    _claim(workdir, config, overrides or {})
    if finished(stage, config, workdir):
        return load_result(stage, workdir)
    return run(stage, config, workdir)


def finished(stage: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether the run in ``workdir`` has written its summary after its last step (a
    pipeline: its own summary, and its last stage finished)."""
    if stage != stages_lib.PIPELINE:
        return pipeline.stage_finished(stage, config, workdir)
    name, command = stages_lib.pipeline_stages(config)[-1]
    return (os.path.exists(os.path.join(workdir, workdir_lib.SUMMARY_FILE))
            and pipeline.stage_finished(command, config[name], os.path.join(workdir, name)))


def _claim(point_dir: str, config: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """Record which config a point directory holds; refuse one that holds another."""
    record = {"overrides": dict(overrides), "config": json.loads(json.dumps(
        config.to_dict(), default=str))}
    path = os.path.join(point_dir, POINT_FILE)
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        changed = [name for name in config_lib.field_names(config)
                   if not name.endswith(INVOCATION_FIELDS)
                   and _get(held["config"], name) != _get(record["config"], name)]
        if changed:
            raise ConfigError(f"{point_dir} holds results of a different config (fields "
                              f"{changed} differ); sweep into a new workdir or delete it")
        return
    runfiles.write_json(path, record)


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree
