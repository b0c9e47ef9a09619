"""Reward-model overoptimisation with best-of-n: proxy reward models of several data sizes
pick the best of n samples of the SFT policy; gold and proxy against sqrt(KL_bon) (Gao et
al. 2022, Fig. 1a).

    python -m experiments.bon_overoptimization.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

import jaxrlhf
from experiments import common
from jaxrlhf.analysis import fit_overoptimization
from jaxrlhf.api import with_overrides

NAME = "bon_overoptimization"
PAPER = ("Gao, Schulman & Hilton (2022), Scaling Laws for Reward Model Overoptimization, "
         "Fig. 1a")
CLAIM = ("Choosing the best of n samples by a proxy reward model raises the proxy score "
         "monotonically in n while the gold reward rises, peaks and falls for a proxy "
         "trained on little data; gold follows d(alpha - beta d) in d = sqrt(KL_bon), and "
         "beta falls as the proxy's data grows.")
FALL = 0.2      # the smallest proxy's gold must give back this fraction of its gain
R2 = 0.9        # every proxy's fit of d(alpha - beta d)
CRITERION = (
    "From the pool estimates at n = 1, 2, 4, ..., N: (1) for every proxy the proxy score "
    "rises strictly with n; (2) for the proxy trained on the fewest pairs, gold peaks at "
    f"some n < N and gold at n = N is below the peak by at least {FALL:.0%} of the peak's "
    "gain over n = 1; (3) for every proxy the least-squares fit gold(n) - gold(1) = "
    f"d(alpha - beta d), d = sqrt(log n - (n - 1)/n), has R^2 >= {R2}; (4) the fitted beta "
    "falls strictly as the proxy's training pairs grow.")


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """One SFT policy, one proxy per data size (shared with rl_overoptimization), and one
    best-of-N pool of the SFT policy's samples scored by each proxy (the same samples:
    the pool's seed is fixed)."""
    sft = common.sft_policy(config, root)
    proxies = common.reward_models(config, root, "proxies",
                                   {"reward.num_train_pairs": list(config.proxy_pairs)}, sft)
    series = []
    for _, row in proxies.iterrows():
        pairs = int(row["reward.num_train_pairs"])
        bon = with_overrides(config.bon, {"policy_init": sft, "reward_init": row["workdir"]})
        result = jaxrlhf.run_once("bon", bon, os.path.join(root, NAME, f"pairs={pairs}"))
        curve = result.metrics
        series.append({"pairs": pairs, "rm_accuracy": float(row["eval/rm/accuracy"]),
                       "rm_gold_accuracy": float(row["eval/rm/gold_accuracy"]),
                       "n": [int(n) for n in curve["bon/n"]], "kl": curve["bon/kl"].tolist(),
                       "proxy": curve["bon/proxy"].tolist(), "gold": curve["bon/gold"].tolist()})
    return {"pool": int(config.bon.bon.n), "prompts": int(config.bon.bon.num_prompts),
            "proxies": series}


def _summary(proxy: Mapping[str, Any]) -> dict[str, Any]:
    """Gold peak, gain and fall, proxy monotonicity and the best-of-n form's fit."""
    gold, proxy_score = np.asarray(proxy["gold"]), np.asarray(proxy["proxy"])
    peak = int(np.argmax(gold))
    fit = fit_overoptimization("bon", np.asarray(proxy["kl"]), gold - gold[0])
    gain = float(gold[peak] - gold[0])
    return {"pairs": proxy["pairs"], "gold_1": float(gold[0]), "gold_peak": float(gold[peak]),
            "n_at_peak": int(proxy["n"][peak]), "gold_final": float(gold[-1]),
            "fall_fraction_of_gain": float((gold[peak] - gold[-1]) / gain) if gain > 0 else None,
            "proxy_1": float(proxy_score[0]), "proxy_final": float(proxy_score[-1]),
            "proxy_rises": bool(np.all(np.diff(proxy_score) > 0)),
            "fit": {"alpha": fit.alpha, "beta": fit.beta, "r2": fit.r2}}


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``), from the raw series alone."""
    summaries = sorted((_summary(p) for p in series["proxies"]), key=lambda s: s["pairs"])
    small = summaries[0]
    fall = small["fall_fraction_of_gain"]
    betas = [s["fit"]["beta"] for s in summaries]
    checks = {
        "proxy_rises_for_every_proxy": all(s["proxy_rises"] for s in summaries),
        "smallest_proxy_gold_peaks_and_falls": bool(
            small["n_at_peak"] < series["proxies"][0]["n"][-1] and fall is not None
            and fall >= FALL),
        "every_fit_r2_at_least": all(s["fit"]["r2"] >= R2 for s in summaries),
        "beta_falls_with_data": bool(np.all(np.diff(betas) < 0)),
    }
    return {"passed": all(checks.values()),
            "measured": {"checks": checks, "smallest_proxy_pairs": small["pairs"],
                         "proxies": summaries}}


def plot(results: Mapping[str, Any]) -> Figure:
    """Gold (with the fitted best-of-n form) and proxy against sqrt(KL_bon), per proxy."""
    fig = Figure(figsize=(10, 4))
    gold_ax, proxy_ax = fig.subplots(1, 2)
    colors = iter(["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"])
    for proxy in sorted(results["series"]["proxies"], key=lambda p: p["pairs"]):
        s, color = _summary(proxy), next(colors)
        d = np.sqrt(np.asarray(proxy["kl"]))
        gold_ax.plot(d, proxy["gold"], "o", ms=4, color=color,
                     label=f"{proxy['pairs']} pairs (R\u00b2 {s['fit']['r2']:.2f})")
        grid = np.linspace(0.0, d.max(), 100)
        fit = s["fit"]
        gold_ax.plot(grid, s["gold_1"] + grid * (fit["alpha"] - fit["beta"] * grid), "-",
                     color=color, lw=1)
        proxy_ax.plot(d, proxy["proxy"], "o-", ms=4, lw=1, color=color,
                      label=f"{proxy['pairs']} pairs")
    first = results["series"]["proxies"][0]
    for n, kl, score in zip(first["n"], first["kl"], first["proxy"]):
        if n in (1, 4, 16, 64) or n == first["n"][-1]:
            proxy_ax.annotate(f"n={n}", (np.sqrt(kl), score), textcoords="offset points",
                              xytext=(2, -12), fontsize=7)
    gold_ax.set(xlabel="sqrt(KL_bon) [sqrt nats]", ylabel="gold reward",
                title="gold (points) and fit d(\u03b1 - \u03b2 d) (lines)")
    proxy_ax.set(xlabel="sqrt(KL_bon) [sqrt nats]", ylabel="proxy score (normalised)",
                 title="proxy reward model score")
    gold_ax.legend(fontsize=8, title="proxy trained on")
    proxy_ax.legend(fontsize=8)
    fig.suptitle(f"Best-of-n of the SFT policy, n = 1 ... {results['series']['pool']}, "
                 f"{results['series']['prompts']} held-out prompts, one pool per proxy")
    fig.subplots_adjust(top=0.84, wspace=0.25)
    return fig


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
