"""The reward-KL frontier: PPO at several KL coefficients against a reward model and
against the gold reward; final (KL, gold) with standard errors over seeds (Ziegler et al.
2019, Fig. 2 / Stiennon et al. 2020, Fig. 5).

    python -m experiments.kl_frontier.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments import common
from jaxrlhf.analysis import mean_stderr

NAME = "kl_frontier"
PAPER = ("Ziegler et al. (2019), Fine-Tuning Language Models from Human Preferences, Fig. 2; "
         "Stiennon et al. (2020), Learning to Summarize from Human Feedback, Fig. 5")
CLAIM = ("The KL coefficient beta trades reward for staying close to the initial policy: a "
         "higher beta gives a lower KL, and optimising the true reward reaches more true "
         "reward at any given KL than optimising a learned reward model of it.")
CRITERION = (
    "With means over seeds of the final held-out KL and gold reward at each beta: (a) for "
    "each reward source the mean KL strictly decreases as beta increases; (b) at every "
    "reward-model point whose mean KL lies within the range of the gold-reward points' mean "
    "KLs (at least one must), the gold-reward frontier — linear interpolation in KL between "
    "its points sorted by KL — is at least the reward-model point's mean gold minus its "
    "standard error over seeds.")


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """PPO per reward source, beta and seed from one SFT policy; the final evaluations."""
    sft = common.sft_policy(config, root)
    proxy = common.reward_models(config, root, "proxies",
                                 {"reward.num_train_pairs": [config.proxy_pairs]}, sft).iloc[0]
    grid = {"ppo.kl_coef": list(config.kl_coefs), "seed": list(config.seeds)}
    points = []
    for source in config.reward_sources:
        reward_init = proxy["workdir"] if source == "model" else ""
        table = common.ppo_runs(config, root, os.path.join(NAME, source), grid, sft,
                                {"ppo.reward_source": source, "reward_init": reward_init})
        points += [{"source": source, "kl_coef": float(row["ppo.kl_coef"]),
                    "seed": int(row["seed"]), "kl": float(row["kl"]),
                    "gold": float(row["gold_after"]),
                    "gold_stderr": float(row["gold_after_stderr"]),
                    "score": float(row["score_after"]), "gold_before": float(row["gold_before"])}
                   for _, row in table.iterrows()]
    return {"proxy": {"pairs": int(config.proxy_pairs),
                      "rm_accuracy": float(proxy["eval/rm/accuracy"]),
                      "rm_gold_accuracy": float(proxy["eval/rm/gold_accuracy"])},
            "points": points}


def frontier(series: Mapping[str, Any]) -> pd.DataFrame:
    """Mean and standard error over seeds of KL, gold and score per (source, beta)."""
    table = pd.DataFrame(series["points"])
    return mean_stderr(table, ["source", "kl_coef"], ["kl", "gold", "score"]).sort_values(
        ["source", "kl_coef"], ignore_index=True)


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``), from the raw series alone."""
    agg = frontier(series)
    monotone = {}
    for source, group in agg.groupby("source"):
        kl = group.sort_values("kl_coef")["kl"].to_numpy()
        monotone[source] = bool(np.all(np.diff(kl) < 0))
    gold = agg[agg["source"] == "gold"].sort_values("kl")
    model = agg[agg["source"] == "model"]
    lo, hi = gold["kl"].min(), gold["kl"].max()
    matched = []
    for _, point in model.iterrows():
        if lo <= point["kl"] <= hi:
            frontier_gold = float(np.interp(point["kl"], gold["kl"], gold["gold"]))
            matched.append({"kl_coef": point["kl_coef"], "kl": point["kl"],
                            "model_gold": point["gold"], "model_gold_se": point["gold_se"],
                            "gold_frontier": frontier_gold,
                            "dominated": bool(frontier_gold >= point["gold"] - point["gold_se"])})
    dominates = bool(matched) and all(m["dominated"] for m in matched)
    return {"passed": bool(all(monotone.values()) and dominates),
            "measured": {"kl_decreases_with_beta": monotone, "matched_points": matched,
                         "gold_frontier_dominates": dominates,
                         "frontier": agg.to_dict(orient="records")}}


def plot(results: Mapping[str, Any]) -> Figure:
    """Gold against KL for both reward sources (points labelled by beta), and the reward
    model's own score for reward-model PPO."""
    agg = frontier(results["series"])
    fig = Figure(figsize=(10, 4))
    gold_ax, score_ax = fig.subplots(1, 2)
    styles = {"model": ("#d95f02", "reward-model PPO"), "gold": ("#1b9e77", "gold-reward PPO")}
    for source, group in agg.groupby("source"):
        color, label = styles[source]
        group = group.sort_values("kl")
        gold_ax.errorbar(group["kl"], group["gold"], xerr=group["kl_se"], yerr=group["gold_se"],
                         fmt="o-", color=color, label=label, capsize=2, ms=4, lw=1)
        for _, p in group.iterrows():
            gold_ax.annotate(f"\u03b2={p['kl_coef']:g}", (p["kl"], p["gold"]), fontsize=7,
                             xytext=(-22, 5) if source == "gold" else (3, -10),
                             textcoords="offset points", color=color)
        if source == "model":
            score_ax.errorbar(group["kl"], group["score"], xerr=group["kl_se"],
                              yerr=group["score_se"], fmt="o-", color=color, capsize=2, ms=4,
                              lw=1, label="reward-model score")
            score_ax.errorbar(group["kl"], group["gold"], yerr=group["gold_se"], fmt="s--",
                              color="#555555", capsize=2, ms=3, lw=1, label="gold")
    before = np.mean([p["gold_before"] for p in results["series"]["points"]])
    gold_ax.axhline(before, color="#999999", lw=0.8, ls=":", label="SFT policy")
    gold_ax.set(xlabel="KL(policy || SFT) [nats], held out", ylabel="gold reward",
                title="final gold reward against KL")
    score_ax.set(xlabel="KL(policy || SFT) [nats], held out", ylabel="reward",
                 title="reward-model PPO: proxy score and gold")
    gold_ax.legend(fontsize=8)
    score_ax.legend(fontsize=8)
    n = agg["n"].max()
    fig.suptitle(f"Reward-KL frontier (mean \u00b1 s.e. over {n} seeds)")
    return fig


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
