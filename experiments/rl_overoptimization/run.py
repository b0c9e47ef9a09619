"""Reward-model overoptimisation under RL: PPO without a KL penalty against proxy reward
models of several data sizes, gold and proxy against sqrt(KL) (Gao et al. 2022, Fig. 1b).

    python -m experiments.rl_overoptimization.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import common
from jaxrlhf.analysis import fit_overoptimization

NAME = "rl_overoptimization"
PAPER = ("Gao, Schulman & Hilton (2022), Scaling Laws for Reward Model Overoptimization, "
         "Fig. 1b")
CLAIM = ("Optimising a proxy reward model with RL keeps raising the proxy score while the "
         "gold reward rises, peaks and falls, and gold follows d(alpha - beta log d) in "
         "d = sqrt(KL).")
FALL = 0.2      # the gold must give back this fraction of its gain
TAIL = 3        # "final" = the mean of the last TAIL evaluations
CRITERION = (
    f"On the seed-mean series of the proxy trained on the fewest pairs: gold peaks before "
    f"the last {TAIL} evaluations and their mean gold is below the peak by at least "
    f"{FALL:.0%} of the peak's gain over the SFT policy (step 0), while their mean proxy "
    f"score is above the proxy score at the gold peak; and for every proxy the final proxy "
    f"score (mean of the last {TAIL}) is above its step-0 score. The fit "
    "gold - gold_0 = d(alpha - beta log d) is reported with R^2 for every proxy (not part "
    "of the pass).")


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """One SFT policy, one proxy per data size, PPO (no KL penalty) per proxy and seed."""
    sft = common.sft_policy(config, root)
    proxies = common.reward_models(config, root, "proxies",
                                   {"reward.num_train_pairs": list(config.proxy_pairs)}, sft)
    series = []
    for _, row in proxies.iterrows():
        pairs = int(row["reward.num_train_pairs"])
        table = common.ppo_runs(config, root, os.path.join(NAME, f"pairs={pairs}"),
                                {"seed": list(config.seeds)}, sft,
                                {"reward_init": row["workdir"]})
        runs = [{"seed": int(seed), **common.eval_series(workdir)}
                for seed, workdir in zip(table["seed"], table["workdir"])]
        series.append({"pairs": pairs, "rm_accuracy": float(row["eval/rm/accuracy"]),
                       "rm_gold_accuracy": float(row["eval/rm/gold_accuracy"]), "runs": runs})
    return {"proxies": series}


def _summary(proxy: Mapping[str, Any]) -> dict[str, Any]:
    """Seed means per evaluation, the gold peak, the tail means and the RL-form fit."""
    m = common.seed_mean(proxy["runs"], ("kl", "gold", "proxy"))
    peak = int(np.argmax(m["gold"]))
    fit = fit_overoptimization("rl", np.maximum(m["kl"], 0.0), m["gold"] - m["gold"][0])
    return {"pairs": proxy["pairs"], "mean": m, "peak_index": peak,
            "gold_0": float(m["gold"][0]), "gold_peak": float(m["gold"][peak]),
            "gold_final": float(m["gold"][-TAIL:].mean()),
            "proxy_0": float(m["proxy"][0]), "proxy_at_peak": float(m["proxy"][peak]),
            "proxy_final": float(m["proxy"][-TAIL:].mean()),
            "kl_final": float(m["kl"][-TAIL:].mean()),
            "fit": {"alpha": fit.alpha, "beta": fit.beta, "r2": fit.r2}}


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``), from the raw series alone."""
    summaries = sorted((_summary(p) for p in series["proxies"]), key=lambda s: s["pairs"])
    small = summaries[0]
    n_evals = len(small["mean"]["step"])
    gain = small["gold_peak"] - small["gold_0"]
    peaked_early = small["peak_index"] < n_evals - TAIL and gain > 0
    fell = small["gold_peak"] - small["gold_final"] >= FALL * gain
    proxy_rising = small["proxy_final"] > small["proxy_at_peak"]
    all_rise = all(s["proxy_final"] > s["proxy_0"] for s in summaries)
    measured = {
        "smallest_proxy_pairs": small["pairs"],
        "gold_peak_step": int(small["mean"]["step"][small["peak_index"]]),
        "gold_fall_fraction_of_gain": (small["gold_peak"] - small["gold_final"]) / gain
        if gain > 0 else None,
        "checks": {"gold_peaks_before_the_tail": bool(peaked_early),
                   "gold_falls_enough": bool(fell), "proxy_keeps_rising": bool(proxy_rising),
                   "every_proxy_rises": bool(all_rise)},
        "proxies": [{k: v for k, v in s.items() if k not in ("mean", "peak_index")}
                    for s in summaries],
    }
    return {"passed": bool(peaked_early and fell and proxy_rising and all_rise),
            "measured": measured}


def plot(results: Mapping[str, Any]) -> Figure:
    """Gold (with the fitted RL form) and proxy against sqrt(KL), seed means per proxy."""
    fig = Figure(figsize=(10, 4))
    gold_ax, proxy_ax = fig.subplots(1, 2)
    colors = iter(["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"])
    for proxy in sorted(results["series"]["proxies"], key=lambda p: p["pairs"]):
        s, color = _summary(proxy), next(colors)
        d = np.sqrt(np.maximum(s["mean"]["kl"], 0.0))
        label = f"{proxy['pairs']} pairs (R\u00b2 {s['fit']['r2']:.2f})"
        gold_ax.plot(d, s["mean"]["gold"], "o", ms=3, color=color, label=label)
        grid = np.linspace(0.0, d.max(), 100)
        fit = s["fit"]
        curve = grid * (fit["alpha"] - fit["beta"] * np.log(np.where(grid > 0, grid, 1.0)))
        gold_ax.plot(grid, s["gold_0"] + curve, "-", color=color, lw=1)
        proxy_ax.plot(d, s["mean"]["proxy"], "o-", ms=3, lw=1, color=color,
                      label=f"{proxy['pairs']} pairs")
    gold_ax.set(xlabel="sqrt(KL(policy || SFT)) [sqrt nats]", ylabel="gold reward",
                title="gold (points) and fit d(\u03b1 - \u03b2 log d) (lines)")
    proxy_ax.set(xlabel="sqrt(KL(policy || SFT)) [sqrt nats]", ylabel="proxy score (normalised)",
                 title="proxy reward model score")
    gold_ax.legend(fontsize=8, title="proxy trained on")
    proxy_ax.legend(fontsize=8)
    fig.suptitle("PPO without KL penalty against proxies of several data sizes "
                 f"(mean of {len(results['series']['proxies'][0]['runs'])} seeds)")
    return fig


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
