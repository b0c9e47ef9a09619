"""SFT -> reward model -> PPO in one command, each stage in its own sub-directory, then a
report. Re-running the same command resumes at the stage and step where it stopped.

``python -m jaxrlhf pipeline --config=configs/pipeline/quickstart.py --workdir=DIR``

A pipeline config may list another sequence of stages in ``stages`` (``(name, command)``
pairs; ``jaxrlhf.config.pipeline_stages``), e.g. rejection-sampling fine-tuning: SFT ->
reward -> best-of-n -> SFT on the chosen responses. Each stage is wired to the ones before
it: it starts from the policy of the latest stage that trained one (SFT, PPO, DPO), uses
the latest reward model, and an SFT stage after a best-of-n stage trains on its choices.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections

from jaxrlhf import report, runfiles, workdir as workdir_lib
from jaxrlhf.config import PIPELINE_STAGES, pipeline_stages
from jaxrlhf.trainers import bon, dpo, ppo, reward, sft

TIMING_FILE = "timing.json"
TRAINERS = {"sft": sft.train, "reward": reward.train, "ppo": ppo.train, "dpo": dpo.train,
            "bon": bon.run}


POLICY_COMMANDS = ("sft", "ppo", "dpo")      # stages whose run trains a policy


def wire(command: str, config: ml_collections.ConfigDict, policy: str | None,
         reward_model: str | None, chosen: str | None) -> None:
    """Point a stage's config at the latest earlier policy, reward model and best-of-n
    choices (each None when no earlier stage made one)."""
    if policy is not None:
        config.policy_init = policy
    if reward_model is not None and command in ("ppo", "bon"):
        config.reward_init = reward_model
    if chosen is not None and command == "sft":
        config.data.source = chosen


def stage_configs(config: ml_collections.ConfigDict,
                  workdir: str) -> dict[str, tuple[ml_collections.ConfigDict, str, str]]:
    """Each stage's config (a copy; ``config`` is not changed), workdir and command, wired
    to the previous stages' workdirs."""
    out = {}
    policy = reward_model = chosen = None
    for name, command in pipeline_stages(config):
        stage_config, stage_dir = copy.deepcopy(config[name]), os.path.join(workdir, name)
        wire(command, stage_config, policy, reward_model, chosen)
        out[name] = (stage_config, stage_dir, command)
        if command in POLICY_COMMANDS:
            policy = stage_dir
        elif command == "reward":
            reward_model = stage_dir
        elif command == "bon":
            chosen = os.path.join(stage_dir, bon.CHOSEN_FILE)
    return out


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
    """Run (or resume) the stages, then write summary.json (and, for SFT -> reward -> PPO,
    ``report.md`` and its figures)."""
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    stages = stage_configs(config, workdir)
    for name, (stage_config, stage_dir, command) in stages.items():
        print(f"=== pipeline stage: {name} ({stage_dir})")
        TRAINERS[command](stage_config, stage_dir)
    wall = _add_wall_time(workdir, time.perf_counter() - start)
    if [(n, c) for n, (_, _, c) in stages.items()] == [(n, n) for n in PIPELINE_STAGES]:
        return report.write_report(workdir, wall_seconds=wall)
    summary = {"stages": list(stages), **{name: workdir_lib.read_json(stage_dir,
                                                                       workdir_lib.SUMMARY_FILE)
                                          for name, (_, stage_dir, _) in stages.items()},
               "wall_seconds": wall}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary
