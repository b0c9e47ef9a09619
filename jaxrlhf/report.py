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

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas, so writing a
report never touches pyplot's global state or the caller's chosen backend.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxrlhf.metrics import read_metrics

STAGES = ("sft", "reward", "ppo")
FIGURES_DIR = "figures"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
DPI = 150
DEFAULT_TITLE = "jaxrlhf RLHF pipeline report"

# (file name, caption) in report order.
FIGURES = (
    ("sft_eval_loss.png", "SFT: held-out loss"),
    ("reward_accuracy.png", "Reward model: held-out accuracy"),
    ("reward_calibration.png", "Reward model: calibration"),
    ("ppo_reward_vs_kl.png", "PPO: reward against KL from the SFT policy"),
    ("ppo_training.png", "PPO: training diagnostics"),
)


# ---------------------------------------------------------------------------------------
# Reading the stage directories
# ---------------------------------------------------------------------------------------

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
        raise FileNotFoundError(
            f"report: stage directory {path!r} is missing; a pipeline run dir must hold "
            f"{', '.join(STAGES)} sub-directories")
    summary = os.path.join(path, SUMMARY_FILE)
    if not os.path.isfile(summary):
        raise FileNotFoundError(
            f"report: {summary!r} is missing; did the {stage} stage finish?")
    return path


def _metrics(stage_dir: str) -> list[dict[str, Any]]:
    """The stage's metric rows sorted by step; [] when there is no metrics.jsonl."""
    if not os.path.isfile(os.path.join(stage_dir, "metrics.jsonl")):
        return []
    return sorted(read_metrics(stage_dir), key=lambda r: r["step"])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged a finite ``key``."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if _is_number(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------

def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=DPI)


def _plot_sft(rows, summary, path) -> str | None:
    steps, loss = _series(rows, "eval/loss")
    if not steps:
        return "no `eval/loss` rows in sft/metrics.jsonl"
    fig = _new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    tsteps, tloss = _series(rows, "loss")
    if tsteps:
        ax.plot(tsteps, tloss, color="tab:blue", alpha=0.3, lw=1, label="train loss")
    ax.plot(steps, loss, "o-", color="tab:blue", ms=4, label="held-out loss")
    entropy = summary.get("unigram_entropy")
    if _is_number(entropy):
        ax.axhline(entropy, color="gray", ls="--", lw=1.2,
                   label=f"unigram entropy ({entropy:.2f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("SFT: held-out loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return None


def _plot_reward_accuracy(rows, path) -> str | None:
    steps, acc = _series(rows, "eval/rm/accuracy")
    if not steps:
        return "no `eval/rm/accuracy` rows in reward/metrics.jsonl"
    fig = _new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    tsteps, tacc = _series(rows, "rm/accuracy")
    if tsteps:
        ax.plot(tsteps, tacc, color="tab:blue", alpha=0.3, lw=1, label="train batch accuracy")
    ax.plot(steps, acc, "o-", color="tab:blue", ms=4, label="held-out accuracy")
    gsteps, gacc = _series(rows, "eval/rm/gold_accuracy")
    if gsteps:
        ax.plot(gsteps, gacc, "s-", color="tab:orange", ms=4,
                label="held-out agreement with gold reward")
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (chosen scored above rejected)")
    ax.set_title("Reward model: held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)
    return None


def _plot_calibration(table, path) -> str | None:
    if table is None:
        return "no reward/calibration.json"
    bins = [b for b in table
            if _is_number(b.get("predicted")) and _is_number(b.get("observed"))
            and b.get("count", 0) > 0]
    if not bins:
        return "reward/calibration.json has no non-empty bins"
    pred = [b["predicted"] for b in bins]
    obs = [b["observed"] for b in bins]
    counts = [b["count"] for b in bins]
    biggest = max(counts)
    sizes = [20 + 280 * c / biggest for c in counts]
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    ax.plot(pred, obs, color="tab:blue", lw=1, alpha=0.5)
    ax.scatter(pred, obs, s=sizes, color="tab:blue", alpha=0.7, edgecolor="k", lw=0.5,
               label="bins (area ~ count)", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted P(first preferred) = sigmoid(margin)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reward model calibration\n"
                 f"(held-out, {sum(counts) // 2} pairs counted in both orders)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _save(fig, path)
    return None


def _plot_reward_vs_kl(rows, path) -> str | None:
    evals = [r for r in rows if _is_number(r.get("eval/kl"))]
    if not evals:
        return "no `eval/kl` rows in ppo/metrics.jsonl"
    fig = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    drew = False
    gold = [r for r in evals if _is_number(r.get("eval/gold"))]
    if gold:
        err = [r["eval/gold_stderr"] if _is_number(r.get("eval/gold_stderr")) else 0.0
               for r in gold]
        ax.errorbar([r["eval/kl"] for r in gold], [r["eval/gold"] for r in gold], yerr=err,
                    fmt="o-", color="tab:orange", ms=5, capsize=3,
                    label="gold reward (± 1 s.e.)")
        drew = True
    score = [r for r in evals if _is_number(r.get("eval/score"))]
    if score:
        ax.plot([r["eval/kl"] for r in score], [r["eval/score"] for r in score], "s--",
                color="tab:blue", ms=5, label="proxy reward (reward model)")
        drew = True
    if not drew:
        return "no `eval/gold` or `eval/score` values in ppo/metrics.jsonl"
    for r in evals:  # label every point with its PPO iteration
        y = r.get("eval/gold", r.get("eval/score"))
        if _is_number(y):
            label = "SFT policy" if r["step"] == 0 else str(r["step"])
            ax.annotate(label, (r["eval/kl"], y), textcoords="offset points",
                        xytext=(4, 5), ha="left", fontsize=7)
    ax.set_xlabel("KL(policy || SFT) on eval prompts (nats); points labelled by iteration")
    ax.set_ylabel("mean reward per response")
    ax.set_title("PPO: reward against KL")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)
    return None


_TRAINING_PANELS = (
    ("objective/kl", "KL to reference (nats)"),
    ("objective/entropy", "policy entropy of responses (nats)"),
    ("policy/clipfrac", "policy clip fraction"),
)


def _plot_ppo_training(rows, path) -> str | None:
    series = [(key, label, *_series(rows, key)) for key, label in _TRAINING_PANELS]
    if not any(steps for _, _, steps, _ in series):
        return "no PPO training rows in ppo/metrics.jsonl"
    fig = _new_figure((12.0, 3.6))
    axes = fig.subplots(1, len(series))
    for ax, (key, label, steps, values) in zip(axes, series):
        if steps:
            ax.plot(steps, values, "o-", ms=3, lw=1.2)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(key)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO training diagnostics")
    _save(fig, path)
    return None


# ---------------------------------------------------------------------------------------
# Samples before / after
# ---------------------------------------------------------------------------------------

def sample_pairs(samples: Sequence[dict[str, Any]]) -> tuple[int, int, list[dict[str, Any]]]:
    """Pair the first-eval and last-eval samples of the same prompts.

    Returns ``(first_step, last_step, pairs)``; each pair is
    ``{"prompt", "before": row | None, "after": row | None}`` in the order the prompts
    appear at the first eval (prompts new at the last eval follow). A prompt repeated
    within a step is paired by occurrence.
    """
    if not samples:
        raise ValueError("no samples")
    steps = sorted({int(s["step"]) for s in samples})
    first, last = steps[0], steps[-1]

    def by_prompt(step):
        groups: dict[str, list[dict[str, Any]]] = {}
        for s in samples:
            if int(s["step"]) == step:
                groups.setdefault(s["prompt"], []).append(s)
        return groups

    before, after = by_prompt(first), by_prompt(last)
    pairs = []
    for prompt in list(before) + [p for p in after if p not in before]:
        b, a = before.get(prompt, []), after.get(prompt, [])
        for i in range(max(len(b), len(a))):
            pairs.append({"prompt": prompt, "before": b[i] if i < len(b) else None,
                          "after": a[i] if i < len(a) else None})
    return first, last, pairs


def _cell(text: Any) -> str:
    """A markdown table cell: pipes escaped, line breaks as <br>."""
    s = str(text)
    s = s.replace("\\", "\\\\").replace("|", "\\|")
    s = s.replace("\r\n", "\n").replace("\n", "<br>")
    return s if s.strip() else " "


def _num(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if _is_number(v) else "—"


def _pm(v: Any, err: Any) -> str:
    if not _is_number(v):
        return "—"
    return f"{v:.3f} ± {err:.3f}" if _is_number(err) else f"{v:.3f}"


def _samples_table(samples: list[dict[str, Any]]) -> list[str]:
    first, last, pairs = sample_pairs(samples)
    lines = [f"Responses to the same fixed eval prompts at the first eval "
             f"(step {first}, the SFT policy) and the last eval (step {last}, the PPO "
             f"policy); gold = the task's gold reward, proxy = the reward model's score.", ""]
    if first == last:
        lines += ["Only one eval step was logged, so *before* and *after* are the same.", ""]
    lines += [f"| prompt | before: response (step {first}) | gold | proxy "
              f"| after: response (step {last}) | gold | proxy |",
              "|---|---|---:|---:|---|---:|---:|"]
    for p in pairs:
        b, a = p["before"] or {}, p["after"] or {}
        lines.append("| " + " | ".join([
            _cell(p["prompt"]),
            _cell(b.get("response", "—")), _num(b.get("gold")), _num(b.get("score")),
            _cell(a.get("response", "—")), _num(a.get("gold")), _num(a.get("score")),
        ]) + " |")
    return lines


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if not _is_number(seconds):
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _key_numbers(summary: dict[str, Any]) -> list[str]:
    sft, rm, ppo = summary["sft"], summary["reward"], summary["ppo"]
    rows = [
        ("SFT", "held-out loss (first eval → final)",
         f"{_num(sft.get('first_eval_loss'))} → {_num(sft.get('eval_loss'))}"),
        ("SFT", "unigram entropy of the task (nats)", _num(sft.get("unigram_entropy"))),
        ("SFT", "training steps", str(sft.get("step", "—"))),
        ("Reward", "held-out accuracy", _num(rm.get("eval_accuracy"))),
    ]
    if "step" in rm:
        rows.append(("Reward", "training steps", str(rm["step"])))
    if _is_number(rm.get("eval/rm/gold_accuracy")):
        rows.append(("Reward", "held-out agreement with gold", _num(rm["eval/rm/gold_accuracy"])))
    if _is_number(rm.get("eval/rm/margin")):
        rows.append(("Reward", "held-out mean margin", _num(rm["eval/rm/margin"])))
    rows += [
        ("PPO", "gold reward before (SFT policy)",
         _pm(ppo.get("gold_before"), ppo.get("gold_before_stderr"))),
        ("PPO", "gold reward after (PPO policy)",
         _pm(ppo.get("gold_after"), ppo.get("gold_after_stderr"))),
        ("PPO", "proxy reward before → after",
         f"{_num(ppo.get('score_before'))} → {_num(ppo.get('score_after'))}"),
        ("PPO", "KL from SFT on eval prompts (nats)", _num(ppo.get("kl"))),
        ("PPO", "KL from SFT, last training batch (nats)", _num(ppo.get("train_kl"))),
        ("PPO", "iterations", str(ppo["iterations"]) if "iterations" in ppo else "—"),
        ("all", "wall-clock time", _duration(summary["wall_seconds"])),
    ]
    lines = ["| stage | quantity | value |", "|---|---|---:|"]
    lines += [f"| {a} | {_cell(b)} | {_cell(c)} |" for a, b, c in rows]
    return lines


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

    calib_path = os.path.join(dirs["reward"], "calibration.json")
    calibration = _read_json(calib_path) if os.path.isfile(calib_path) else None
    samples_path = os.path.join(dirs["ppo"], "samples.jsonl")
    samples = _read_jsonl(samples_path) if os.path.isfile(samples_path) else []

    fig_dir = os.path.join(workdir, FIGURES_DIR)
    os.makedirs(fig_dir, exist_ok=True)
    plotters = {
        "sft_eval_loss.png": lambda p: _plot_sft(metrics["sft"], stage_summaries["sft"], p),
        "reward_accuracy.png": lambda p: _plot_reward_accuracy(metrics["reward"], p),
        "reward_calibration.png": lambda p: _plot_calibration(calibration, p),
        "ppo_reward_vs_kl.png": lambda p: _plot_reward_vs_kl(metrics["ppo"], p),
        "ppo_training.png": lambda p: _plot_ppo_training(metrics["ppo"], p),
    }
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, _ in FIGURES:
        path = os.path.join(fig_dir, name)
        if os.path.exists(path):  # never leave a stale figure from an earlier report
            os.remove(path)
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
    with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)

    lines = [f"# {title}", "", "## Key numbers", ""]
    lines += _key_numbers(summary)
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
        lines += _samples_table(samples)
    else:
        lines.append("*No ppo/samples.jsonl: no samples to show.*")
    lines.append("")
    with open(os.path.join(workdir, REPORT_FILE), "w") as f:
        f.write("\n".join(lines))
    return summary
