"""SFT -> reward model -> PPO in one command, each stage in its own sub-directory, then a
report. Re-running the same command resumes at the stage and step where it stopped.

``python -m jaxrlhf pipeline --config=configs/pipeline/quickstart.py --workdir=DIR``
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from jaxrlhf import report
from jaxrlhf.trainers import ppo, reward, sft

STAGES = ("sft", "reward", "ppo")
TIMING_FILE = "timing.json"


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Each stage's config, wired to the previous stages' workdirs."""
    dirs = {name: os.path.join(workdir, name) for name in STAGES}
    sft_config, reward_config, ppo_config = (config[name] for name in STAGES)
    reward_config.policy_init = dirs["sft"]
    ppo_config.policy_init = dirs["sft"]
    ppo_config.ppo.reward_init = dirs["reward"]
    return {"sft": (sft_config, dirs["sft"]), "reward": (reward_config, dirs["reward"]),
            "ppo": (ppo_config, dirs["ppo"])}


def _add_wall_time(workdir: str, seconds: float) -> float:
    """Wall time summed over every invocation that worked on this pipeline."""
    path = os.path.join(workdir, TIMING_FILE)
    total = seconds
    if os.path.exists(path):
        with open(path) as f:
            total += json.load(f)["wall_seconds"]
    with open(path, "w") as f:
        json.dump({"wall_seconds": total}, f)
    return total


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) the three stages, then write ``report.md``, figures and summary.json."""
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    trainers = {"sft": sft.train, "reward": reward.train, "ppo": ppo.train}
    for name, (stage_config, stage_dir) in stage_configs(config, workdir).items():
        print(f"=== pipeline stage: {name} ({stage_dir})")
        trainers[name](stage_config, stage_dir)
    wall = _add_wall_time(workdir, time.perf_counter() - start)
    return report.write_report(workdir, wall_seconds=wall)
