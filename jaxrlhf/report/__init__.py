"""The run report of a three-stage pipeline: figures, a merged summary and ``report.md``.

A pipeline run directory ``DIR`` holds one sub-directory per stage, each written by its
trainer::

    DIR/sft/     metrics.jsonl  summary.json  [samples.jsonl]
    DIR/reward/  metrics.jsonl  summary.json  [calibration.json]
    DIR/ppo/     metrics.jsonl  summary.json  [samples.jsonl]

``write_report(DIR, wall_seconds)`` reads them and writes

* ``DIR/figures/*.png`` (matplotlib, Agg canvas, 150 dpi):
  ``sft_eval_loss.png``, ``reward_accuracy.png``, ``reward_calibration.png``,
  ``ppo_reward_vs_kl.png``, ``ppo_training.png``;
* ``DIR/summary.json``: ``{"sft": {...}, "reward": {...}, "ppo": {...}, "wall_seconds": ...}``
  where each stage entry is a copy of that stage's ``summary.json``;
* ``DIR/report.md``: the key numbers, the figures, and the PPO samples before/after
  (the SFT policy at the first eval, the PPO policy at the last) for the same prompts.

A missing stage directory or stage ``summary.json`` is an error (``FileNotFoundError``
naming the path). Anything optional that is missing (a metrics file, eval rows, gold
accuracy, ``calibration.json``, ``samples.jsonl``) leaves out that figure or table and says
so in the report instead of failing.

Figures are ``jaxrlhf.report.figures``; the markdown tables ``jaxrlhf.report.markdown``.
"""
from __future__ import annotations

import json
import os
from typing import Any

from jaxrlhf import runfiles
from jaxrlhf.stages import DEFAULT_PIPELINE as STAGES
from jaxrlhf.errors import MissingInputError
from jaxrlhf.metrics import METRICS_FILE, read_metrics
from jaxrlhf.report import figures, markdown
from jaxrlhf.workdir import CALIBRATION_FILE, SAMPLES_FILE, SUMMARY_FILE

FIGURES_DIR = "figures"
REPORT_FILE = "report.md"
DEFAULT_TITLE = "jaxrlhf RLHF pipeline report"

# (file name, caption) in report order.
FIGURES = (
    ("sft_eval_loss.png", "SFT: held-out loss"),
    ("reward_accuracy.png", "Reward model: held-out accuracy"),
    ("reward_calibration.png", "Reward model: calibration"),
    ("ppo_reward_vs_kl.png", "PPO: reward against KL from the SFT policy"),
    ("ppo_training.png", "PPO: training diagnostics"),
)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg})") from e
    return rows


def _stage_dir(workdir: str, stage: str) -> str:
    path = os.path.join(workdir, stage)
    if not os.path.isdir(path):
        raise MissingInputError(
            f"report: stage directory {path!r} is missing; a pipeline run dir must hold "
            f"{', '.join(STAGES)} sub-directories")
    summary = os.path.join(path, SUMMARY_FILE)
    if not os.path.isfile(summary):
        raise MissingInputError(
            f"report: {summary!r} is missing; did the {stage} stage finish?")
    return path


def _metrics(stage_dir: str) -> list[dict[str, Any]]:
    """The stage's metric rows sorted by step; [] when there is no metrics.jsonl."""
    if not os.path.isfile(os.path.join(stage_dir, METRICS_FILE)):
        return []
    return sorted(read_metrics(stage_dir), key=lambda r: r["step"])


def write_report(workdir: str, wall_seconds: float, title: str = DEFAULT_TITLE) -> dict:
    """Write ``figures/*.png``, ``summary.json`` and ``report.md`` for a pipeline run.

    Args:
      workdir: the pipeline directory holding ``sft/``, ``reward/`` and ``ppo/``.
      wall_seconds: wall-clock time of the whole pipeline, recorded in the summary.
      title: the report's heading.

    Returns:
      The dict written to ``workdir/summary.json``: ``{"title", "sft", "reward", "ppo",
      "wall_seconds", "figures"}``, where each stage entry is a copy of that stage's
      ``summary.json`` and ``figures`` maps each written figure's file name to its path
      relative to ``workdir``.

    Raises:
      FileNotFoundError: a stage directory or its ``summary.json`` is missing.
    """
    dirs = {stage: _stage_dir(workdir, stage) for stage in STAGES}
    stage_summaries = {stage: _read_json(os.path.join(d, SUMMARY_FILE))
                       for stage, d in dirs.items()}
    for stage, s in stage_summaries.items():
        if not isinstance(s, dict):
            raise ValueError(f"report: {os.path.join(dirs[stage], SUMMARY_FILE)!r} is not "
                             f"a JSON object")
    metrics = {stage: _metrics(d) for stage, d in dirs.items()}

    calib_path = os.path.join(dirs["reward"], CALIBRATION_FILE)
    calibration = _read_json(calib_path) if os.path.isfile(calib_path) else None
    samples_path = os.path.join(dirs["ppo"], SAMPLES_FILE)
    samples = _read_jsonl(samples_path) if os.path.isfile(samples_path) else []

    fig_dir = os.path.join(workdir, FIGURES_DIR)
    plotters = {
        "sft_eval_loss.png": lambda p: figures.plot_sft(metrics["sft"], stage_summaries["sft"], p),
        "reward_accuracy.png": lambda p: figures.plot_reward_accuracy(metrics["reward"], p),
        "reward_calibration.png": lambda p: figures.plot_calibration(calibration, p),
        "ppo_reward_vs_kl.png": lambda p: figures.plot_reward_vs_kl(metrics["ppo"], p),
        "ppo_training.png": lambda p: figures.plot_ppo_training(metrics["ppo"], p),
    }
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, _ in FIGURES:
        path = os.path.join(fig_dir, name)
        runfiles.remove(path)  # never leave a stale figure from an earlier report
        why = plotters[name](path)
        if why is None:
            written[name] = f"{FIGURES_DIR}/{name}"
        else:
            skipped[name] = why

    summary: dict[str, Any] = {
        "title": title,
        **{stage: dict(stage_summaries[stage]) for stage in STAGES},
        "wall_seconds": float(wall_seconds),
        "figures": written,
    }
    runfiles.write_json(os.path.join(workdir, SUMMARY_FILE), summary)

    lines = [f"# {title}", "", "## Key numbers", ""]
    lines += markdown.key_numbers(summary)
    lines += ["", "## Figures", ""]
    for name, caption in FIGURES:
        lines.append(f"### {caption}")
        lines.append("")
        if name in written:
            lines.append(f"![{caption}]({written[name]})")
        else:
            lines.append(f"*Not drawn: {skipped[name]}.*")
        lines.append("")
    lines += ["## Samples before and after PPO", ""]
    if samples:
        lines += markdown.samples_table(samples)
    else:
        lines.append("*No ppo/samples.jsonl: no samples to show.*")
    lines.append("")
    runfiles.write_text(os.path.join(workdir, REPORT_FILE), "\n".join(lines))
    return summary
