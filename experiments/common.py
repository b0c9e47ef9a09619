"""What the paper-figure experiments share: the command line, the shared SFT policy and
reward models, PPO evaluation series, and writing ``results.json`` with its figure.

Every experiment is ``experiments/<name>/run.py`` with

* ``CLAIM`` and ``CRITERION``: the paper's claim and the pass criterion, fixed before the run;
* ``run(config, root) -> series``: trains what it needs under ``root`` (shared runs are
  reused while their config matches, ``jaxrlhf.run_once``) and returns the raw series;
* ``criterion(series) -> {"passed": bool, "measured": {...}}``: computed from the series
  alone, so a test recomputes it from the committed ``results.json``;
* ``plot(results) -> matplotlib Figure``.

    python -m experiments.<name>.run [--config=configs/experiments/<name>.py[:smoke]]
        [--workdir=runs/experiments] [--out=experiments/<name>] [--config.seeds='(0,1)' ...]
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

import jaxrlhf
from jaxrlhf.api import with_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"


# -- shared runs --------------------------------------------------------------------------
def sft_policy(config: ml_collections.ConfigDict, root: str) -> str:
    """The SFT policy of ``config.sft``, trained once in ``root/sft``; its workdir."""
    return jaxrlhf.run_once("sft", config.sft, os.path.join(root, "sft")).workdir


def reward_models(config: ml_collections.ConfigDict, root: str, name: str,
                  grid: Mapping[str, Sequence[Any]], sft_dir: str,
                  overrides: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Reward models of ``config.reward`` (+ ``overrides``) over ``grid``, started from and
    labelling samples of the SFT policy, in ``root/name/<point>``: one row per model."""
    reward = with_overrides(config.reward, {"policy_init": sft_dir, **(overrides or {})})
    return jaxrlhf.sweep("reward", reward, grid, os.path.join(root, name))


def ppo_runs(config: ml_collections.ConfigDict, root: str, name: str,
             grid: Mapping[str, Sequence[Any]], sft_dir: str,
             overrides: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """PPO runs of ``config.ppo`` (+ ``overrides``) from the SFT policy over ``grid``, in
    ``root/name/<point>``: one row per run (the flattened summary and its ``workdir``)."""
    ppo = with_overrides(config.ppo, {"policy_init": sft_dir, **(overrides or {})})
    return jaxrlhf.sweep("ppo", ppo, grid, os.path.join(root, name))


def eval_series(workdir: str) -> dict[str, list[float]]:
    """A PPO run's held-out evaluations in order: ``step``, ``kl`` (to the SFT policy),
    ``gold`` and ``proxy`` (the score PPO optimised), each a list over evaluations."""
    rows = jaxrlhf.load_result("ppo", workdir).metrics.dropna(subset=["eval/gold"])
    return {"step": [int(s) for s in rows["step"]], "kl": rows["eval/kl"].tolist(),
            "gold": rows["eval/gold"].tolist(), "proxy": rows["eval/score"].tolist()}


def seed_mean(runs: Sequence[Mapping[str, Sequence[float]]],
              keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-step means over runs (seeds) of ``keys``; the runs must share their steps."""
    steps = [list(run["step"]) for run in runs]
    if any(s != steps[0] for s in steps):
        raise ValueError("runs evaluated at different steps cannot be averaged step by step")
    out = {"step": np.asarray(steps[0])}
    for key in keys:
        out[key] = np.mean([np.asarray(run[key], np.float64) for run in runs], axis=0)
    return out


# -- results ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Where a result was measured, with the load average (the machine may be shared)."""
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far: unlike wall time it does not
    grow when other jobs share the machine."""
    times = os.times()
    return times.user + times.system


def results(experiment: ModuleType, config: ml_collections.ConfigDict,
            series: Mapping[str, Any], wall_seconds: float, start_machine: dict,
            cpu: float) -> dict:
    """The contents of ``results.json``: claim, criterion, pass/fail with the numbers it
    used, the raw series, the config and how long it took where (wall and CPU seconds)."""
    verdict = experiment.criterion(series)
    return {"experiment": experiment.NAME, "paper": experiment.PAPER, "claim": experiment.CLAIM,
            "criterion": experiment.CRITERION, "passed": bool(verdict["passed"]),
            "measured": verdict["measured"], "series": series,
            "config": json.loads(json.dumps(config.to_dict(), default=str)),
            "wall_seconds": wall_seconds, "cpu_seconds": cpu,
            "machine": {"start": start_machine, "end": machine()}}


def write(out_dir: str, result: Mapping[str, Any], plot: Callable[[Mapping], Any]) -> None:
    """``out_dir/results.json`` and ``out_dir/figure.png``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        json.dump(result, f, indent=1, default=float)
    plot(result).savefig(os.path.join(out_dir, FIGURE_FILE), dpi=120, bbox_inches="tight")


def load(name: str) -> dict:
    """The committed ``experiments/<name>/results.json``."""
    with open(os.path.join(REPO, "experiments", name, RESULTS_FILE)) as f:
        return json.load(f)


def main(experiment: ModuleType) -> None:
    """The experiment's command line (see the module docstring)."""
    from absl import app, flags
    from ml_collections import config_flags

    name = experiment.NAME
    config_flag = config_flags.DEFINE_config_file(
        "config", os.path.join(REPO, "configs", "experiments", f"{name}.py"),
        "The experiment config (FILE.py:smoke for the smoke size).", lock_config=True)
    workdir = flags.DEFINE_string("workdir", "runs/experiments",
                                  "Root of the runs (shared runs are reused across experiments).")
    out = flags.DEFINE_string("out", os.path.join(REPO, "experiments", name),
                              "Where results.json and figure.png go.")

    def run(argv):
        del argv
        start, cpu, started = time.perf_counter(), cpu_seconds(), machine()
        series = experiment.run(config_flag.value, workdir.value)
        result = results(experiment, config_flag.value, series, time.perf_counter() - start,
                         started, cpu_seconds() - cpu)
        write(out.value, result, experiment.plot)
        print(json.dumps({"passed": result["passed"], "measured": result["measured"],
                          "wall_seconds": round(result["wall_seconds"], 1),
                          "cpu_seconds": round(result["cpu_seconds"], 1)}, indent=1))

    app.run(run)
