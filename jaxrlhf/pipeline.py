"""SFT -> reward model -> PPO in one command, each stage in its own sub-directory, then a
report. Re-running the same command resumes at the stage and step where it stopped.

``python -m jaxrlhf pipeline --config=configs/pipeline/quickstart.py --workdir=DIR``
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections

from jaxrlhf import report, runfiles
from jaxrlhf.config import PIPELINE_STAGES
from jaxrlhf.trainers import ppo, reward, sft

TIMING_FILE = "timing.json"
TRAINERS = {"sft": sft.train, "reward": reward.train, "ppo": ppo.train}


def stage_configs(config: ml_collections.ConfigDict,
                  workdir: str) -> dict[str, tuple[ml_collections.ConfigDict, str]]:
    """Each stage's config (a copy; ``config`` is not changed) and workdir, wired to the
    previous stages' workdirs."""
    dirs = {name: os.path.join(workdir, name) for name in PIPELINE_STAGES}
    configs = {name: copy.deepcopy(config[name]) for name in PIPELINE_STAGES}
    configs["reward"].policy_init = dirs["sft"]
    configs["ppo"].policy_init = dirs["sft"]
    configs["ppo"].reward_init = dirs["reward"]
    return {name: (configs[name], dirs[name]) for name in PIPELINE_STAGES}


def _add_wall_time(workdir: str, seconds: float) -> float:
    """Wall time summed over every invocation that worked on this pipeline."""
    path = os.path.join(workdir, TIMING_FILE)
    total = seconds
    if os.path.exists(path):
        with open(path) as f:
            total += json.load(f)["wall_seconds"]
    runfiles.barrier("pipeline:timing")  # every process has read it before process 0 writes
    runfiles.write_json(path, {"wall_seconds": total})
    return total


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) the three stages, then write ``report.md``, figures and summary.json."""
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    for name, (stage_config, stage_dir) in stage_configs(config, workdir).items():
        print(f"=== pipeline stage: {name} ({stage_dir})")
        TRAINERS[name](stage_config, stage_dir)
    wall = _add_wall_time(workdir, time.perf_counter() - start)
    return report.write_report(workdir, wall_seconds=wall)
