"""The pipeline report's figures, drawn from a stage's metric rows.

Each ``plot_*`` writes one PNG and returns None, or returns why it could not (the report
says so instead of failing). Figures are drawn on ``matplotlib.figure.Figure`` with an
explicit Agg canvas, so a report never touches pyplot's global state or the caller's
chosen backend.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxrlhf import runfiles

DPI = 150


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged a finite ``key``."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if is_number(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> None:
    runfiles.write_file(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def plot_sft(rows, summary, path) -> str | None:
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
    if is_number(entropy):
        ax.axhline(entropy, color="gray", ls="--", lw=1.2,
                   label=f"unigram entropy ({entropy:.2f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("SFT: held-out loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return None


def plot_reward_accuracy(rows, path) -> str | None:
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


def plot_calibration(table, path) -> str | None:
    if table is None:
        return "no reward/calibration.json"
    bins = [b for b in table
            if is_number(b.get("predicted")) and is_number(b.get("observed"))
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


def plot_reward_vs_kl(rows, path) -> str | None:
    evals = [r for r in rows if is_number(r.get("eval/kl"))]
    if not evals:
        return "no `eval/kl` rows in ppo/metrics.jsonl"
    fig = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    drew = False
    gold = [r for r in evals if is_number(r.get("eval/gold"))]
    if gold:
        err = [r["eval/gold_stderr"] if is_number(r.get("eval/gold_stderr")) else 0.0
               for r in gold]
        ax.errorbar([r["eval/kl"] for r in gold], [r["eval/gold"] for r in gold], yerr=err,
                    fmt="o-", color="tab:orange", ms=5, capsize=3,
                    label="gold reward (± 1 s.e.)")
        drew = True
    score = [r for r in evals if is_number(r.get("eval/score"))]
    if score:
        ax.plot([r["eval/kl"] for r in score], [r["eval/score"] for r in score], "s--",
                color="tab:blue", ms=5, label="proxy reward (reward model)")
        drew = True
    if not drew:
        return "no `eval/gold` or `eval/score` values in ppo/metrics.jsonl"
    for r in evals:  # label every point with its PPO iteration
        y = r.get("eval/gold", r.get("eval/score"))
        if is_number(y):
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


def plot_ppo_training(rows, path) -> str | None:
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
