"""The pipeline report's markdown: the key-numbers table and the samples before and after PPO."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxrlhf.report.figures import is_number


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
    return format(v, fmt) if is_number(v) else "—"


def _pm(v: Any, err: Any) -> str:
    if not is_number(v):
        return "—"
    return f"{v:.3f} ± {err:.3f}" if is_number(err) else f"{v:.3f}"


def samples_table(samples: list[dict[str, Any]]) -> list[str]:
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


def _duration(seconds: float) -> str:
    if not is_number(seconds):
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def key_numbers(summary: dict[str, Any]) -> list[str]:
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
    if is_number(rm.get("eval/rm/gold_accuracy")):
        rows.append(("Reward", "held-out agreement with gold", _num(rm["eval/rm/gold_accuracy"])))
    if is_number(rm.get("eval/rm/margin")):
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
