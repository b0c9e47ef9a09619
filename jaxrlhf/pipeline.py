"""SFT -> reward model -> PPO in one command, each stage in its own sub-directory, then a
report. Re-running the same command resumes at the stage and step where it stopped.

``python -m jaxrlhf pipeline --config=configs/pipeline/quickstart.py --workdir=DIR``

A pipeline config may list another sequence of stages in ``stages`` (``(name, command)``
pairs; ``jaxrlhf.stages.pipeline_stages``), e.g. rejection-sampling fine-tuning: SFT ->
reward -> best-of-n -> SFT on the chosen responses. Each stage is wired to the ones before
it by what each stage reads and produces (``jaxrlhf.stages.STAGES``): it starts from the
policy of the latest stage that trained one (pretraining, SFT, PPO, DPO), uses the latest
reward model, and an SFT stage after a best-of-n stage trains on its choices — unless its
config names the stage to read from, ``policy_init="@sft"`` (several methods from one SFT
policy, as ``configs/pipeline/imdb_research.py`` runs them).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections

from jaxrlhf import checkpoint, config as config_lib, report, runfiles, stages as stages_lib
from jaxrlhf import trackers, workdir as workdir_lib
from jaxrlhf.trainers import bon

TIMING_FILE = "timing.json"


def wire(stage: str, config: ml_collections.ConfigDict, products: dict[str, str],
         stage_products: dict[str, str]) -> None:
    """Point a stage's config at what it reads (``Stage.reads``) through its product fields
    (``stages.PRODUCT_FIELDS``: ``policy_init``, ``reward_init``, ``data.source``): the
    product of the stage a field names (``"@sft"``; ``stage_products``, by stage name),
    else the latest earlier product of that kind (``products``, by kind)."""
    named = stages_lib.references(config)
    for product in stages_lib.get(stage).reads:
        path = stage_products[named[product]] if product in named else products.get(product)
        if path is not None:
            config_lib.override(config, stages_lib.PRODUCT_FIELDS[product], path)


def product_path(stage: str, stage_dir: str) -> str:
    """What a finished stage hands on: its workdir, or best-of-n's chosen samples file."""
    return (os.path.join(stage_dir, bon.CHOSEN_FILE) if stages_lib.get(stage).produces == "chosen"
            else stage_dir)


def stage_configs(config: ml_collections.ConfigDict,
                  workdir: str) -> dict[str, tuple[ml_collections.ConfigDict, str, str]]:
    """Each stage's config (a copy; ``config`` is not changed), workdir and command, wired
    to the previous stages' workdirs."""
    out, products, stage_products = {}, {}, {}
    stages_lib.check_references(config)
    for name, command in stages_lib.pipeline_stages(config):
        stage_config, stage_dir = copy.deepcopy(config[name]), os.path.join(workdir, name)
        wire(command, stage_config, products, stage_products)
        out[name] = (stage_config, stage_dir, command)
        produces = stages_lib.get(command).produces
        if produces is not None:
            products[produces] = stage_products[name] = product_path(command, stage_dir)
    return out


def _add_wall_time(workdir: str, seconds: float, stage: str | None = None) -> dict[str, Any]:
    """Add ``seconds`` to the pipeline's wall time (``stage=None``) or to one stage's, summed
    over every invocation that worked on it, in ``WORKDIR/timing.json``: ``{"wall_seconds":
    total, "stage_wall_seconds": {stage: seconds}}``. A stage's time is added when it
    returns, so the part of it an interrupted invocation spent is not counted."""
    path = os.path.join(workdir, TIMING_FILE)
    timing = {"wall_seconds": 0.0, "stage_wall_seconds": {}}
    if os.path.exists(path):
        with open(path) as f:
            timing.update(json.load(f))
    if stage is None:
        timing["wall_seconds"] += seconds
    else:
        stage_seconds = timing["stage_wall_seconds"]
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
    runfiles.barrier("pipeline:timing")  # every process has read it before process 0 writes
    runfiles.write_json(path, timing)
    return timing


def stage_finished(command: str, config: ml_collections.ConfigDict, stage_dir: str) -> bool:
    """Whether the ``command`` run in ``stage_dir`` has written its summary after its last
    step (a stage without steps, such as best-of-n: at all)."""
    if not os.path.exists(os.path.join(stage_dir, workdir_lib.SUMMARY_FILE)):
        return False
    if not stages_lib.get(command).has_steps:
        return True
    step = checkpoint.latest_step(os.path.join(stage_dir, workdir_lib.CHECKPOINT_DIR))
    return step == config.train.steps


def run_stage(command: str, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) the stage ``command`` in ``workdir``; once it has finished, send its
    summary and figures to the experiment trackers its config names (``jaxrlhf.trackers``)."""
    summary = stages_lib.get(command).train(config, workdir)
    trackers.report(config, workdir, command, summary)
    return summary


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) the stages, then write summary.json (and, for SFT -> reward -> PPO,
    ``report.md`` and its figures)."""
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    stages = stage_configs(config, workdir)
    for name, (stage_config, stage_dir, command) in stages.items():
        if stage_finished(command, stage_config, stage_dir):
            print(f"=== pipeline stage: {name} finished ({stage_dir}): reused")
            continue
        print(f"=== pipeline stage: {name} ({stage_dir})")
        stage_start = time.perf_counter()
        run_stage(command, stage_config, stage_dir)
        _add_wall_time(workdir, time.perf_counter() - stage_start, stage=name)
    timing = _add_wall_time(workdir, time.perf_counter() - start)
    wall = timing["wall_seconds"]
    if [(n, c) for n, (_, _, c) in stages.items()] == [(n, n) for n in stages_lib.DEFAULT_PIPELINE]:
        return report.write_report(workdir, wall_seconds=wall)
    summary = {"stages": list(stages), **{name: workdir_lib.read_json(stage_dir,
                                                                       workdir_lib.SUMMARY_FILE)
                                          for name, (_, stage_dir, _) in stages.items()},
               "wall_seconds": wall, "stage_wall_seconds": timing["stage_wall_seconds"]}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def run(command: str, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) a stage, or a pipeline, with ``config`` in ``workdir``."""
    if command == stages_lib.PIPELINE:
        return train(config, workdir)
    return run_stage(command, config, workdir)
