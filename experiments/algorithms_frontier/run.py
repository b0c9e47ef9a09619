"""Gold reward against KL from the SFT policy for PPO, GRPO, RLOO, DPO, IPO and best-of-n,
from one SFT policy with the same preference pairs and reward model, each at several
strengths and seeds (Rafailov et al. 2023, Fig. 2).

    python -m experiments.algorithms_frontier.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import jaxrlhf
from experiments import common
from jaxrlhf.analysis import mean_stderr
from jaxrlhf.api import with_overrides

NAME = "algorithms_frontier"
PAPER = ("Rafailov et al. (2023), Direct Preference Optimization: Your Language Model is "
         "Secretly a Reward Model, Fig. 2 (left)")
CLAIM = ("On a task with a known gold reward, DPO's frontier of gold reward against KL from "
         "the SFT policy dominates PPO's: at any KL, DPO reaches at least as much reward.")
CRITERION = (
    "With means over seeds of the final held-out KL from the SFT policy and gold reward at "
    "each strength: at every PPO or DPO point whose mean KL lies in the overlap of the two "
    "methods' KL ranges (from the larger of their smallest mean KLs to the smaller of their "
    "largest; at least one point must), DPO's frontier — linear interpolation in KL between "
    "its points sorted by KL — is strictly above PPO's frontier.")
BUDGET = 1.0    # nats: the KL at which gold per nat is compared
GOLD_PER_NAT = (
    f"Gold per nat at K = {BUDGET:g} nat: per seed, (gold(K) - gold_SFT) / K, where gold(K) "
    "interpolates linearly in KL along the method's points of that seed sorted by KL, "
    "started at the SFT policy (0, gold_SFT), and gold_SFT is the mean gold of every sample "
    "of that seed's best-of-n pool (n = 1); then the mean and standard error over seeds. A "
    "method whose points do not reach K in some seed has none.")
# How each trained method is run: its stage and the config field of its strength.
STAGES = {"ppo": ("ppo", "ppo.kl_coef"), "grpo": ("ppo", "ppo.kl_coef"),
          "rloo": ("ppo", "ppo.kl_coef"), "dpo": ("dpo", "dpo.beta"),
          "ipo": ("dpo", "dpo.beta")}
METHODS = (*STAGES, "bon")
LABELS = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "ipo": "IPO",
          "bon": "best-of-n"}
STRENGTH = {"ppo": "\u03b2", "grpo": "\u03b2", "rloo": "\u03b2", "dpo": "\u03b2",
            "ipo": "\u03c4", "bon": "n"}
COLORS = {"ppo": "#d95f02", "grpo": "#e7298a", "rloo": "#7570b3", "dpo": "#1b9e77",
          "ipo": "#66a61e", "bon": "#666666"}


# -- runs ---------------------------------------------------------------------------------
def method_sweep(config: ml_collections.ConfigDict, root: str, name: str, method: str,
                 seed: int, sft: str, reward: pd.Series) -> pd.DataFrame:
    """``method`` at each of its strengths from the SFT policy, in ``root/name/method``: RL
    against ``reward``'s model, DPO and IPO on its pairs (checked to be the same pairs);
    one row per run (``jaxrlhf.sweep``)."""
    stage, field = STAGES[method]
    overrides = {"policy_init": sft, "seed": seed}
    if stage == "ppo":
        overrides["reward_init"] = reward["workdir"]
    table = jaxrlhf.sweep(stage, with_overrides(config[method], overrides),
                          {field: list(config.strengths[method])},
                          os.path.join(root, name, method, f"seed={seed}"))
    if stage == "dpo" and not (table["data.train"] == reward["data.train"]).all():
        raise RuntimeError(f"{method} (seed {seed}) trained on other pairs than the reward "
                           f"model: {table['data.train'].iloc[0]!r} against "
                           f"{reward['data.train']!r}; config.{method}.reward must be "
                           "config.reward.reward")
    return table


def trained_points(config: ml_collections.ConfigDict, root: str, method: str, seed: int,
                   sft: str, reward: pd.Series) -> list[dict[str, Any]]:
    """The final held-out evaluation of each run of :func:`method_sweep`."""
    stage, field = STAGES[method]
    table = method_sweep(config, root, NAME, method, seed, sft, reward)
    return [{"method": method, "strength": float(row[field]), "seed": seed,
             "kl": float(row["kl"]), "gold": float(row["gold_after"]),
             "score": float(row["score_after"]) if stage == "ppo" else None}
            for _, row in table.iterrows()]


def best_of_n_points(config: ml_collections.ConfigDict, root: str, seed: int, sft: str,
                     reward: pd.Series) -> tuple[float, list[dict[str, Any]]]:
    """The SFT policy's gold (n = 1: every sample of the pool) and best-of-n by the reward
    model at each n of ``strengths.bon``, estimated without bias from one pool."""
    bon = with_overrides(config.bon, {"policy_init": sft, "reward_init": reward["workdir"],
                                      "seed": seed})
    curve = jaxrlhf.run_once("bon", bon, os.path.join(root, NAME, "bon", f"seed={seed}")
                             ).metrics.set_index("bon/n")
    missing = sorted(set(config.strengths.bon) - set(curve.index))
    if missing:
        raise ValueError(f"config.strengths.bon has n = {missing}, not powers of 2 up to "
                         f"config.bon.bon.n={config.bon.bon.n}")
    points = [{"method": "bon", "strength": float(n), "seed": seed,
               "kl": float(curve.loc[n, "bon/kl"]), "gold": float(curve.loc[n, "bon/gold"]),
               "score": float(curve.loc[n, "bon/proxy"])} for n in config.strengths.bon]
    return float(curve.loc[1, "bon/gold"]), points


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """One SFT policy; per seed one reward model (and its pairs), then every method."""
    sft = common.sft_policy(config, root)
    rewards = common.reward_models(config, root, os.path.join(NAME, "reward"),
                                   {"seed": list(config.seeds)}, sft)
    sft_gold, models, points = [], [], []
    for _, reward in rewards.iterrows():
        seed = int(reward["seed"])
        models.append({"seed": seed, "accuracy": float(reward["eval/rm/accuracy"]),
                       "gold_accuracy": float(reward["eval/rm/gold_accuracy"]),
                       "pairs": reward["data.train"]})
        gold, bon = best_of_n_points(config, root, seed, sft, reward)
        sft_gold.append({"seed": seed, "gold": gold})
        points += bon
        for method in STAGES:
            points += trained_points(config, root, method, seed, sft, reward)
    return {"sft": sft_gold, "reward_models": models, "points": points}


# -- analysis -----------------------------------------------------------------------------
def frontier(series: Mapping[str, Any]) -> pd.DataFrame:
    """Mean and standard error over seeds of KL and gold per (method, strength)."""
    table = pd.DataFrame(series["points"])
    return mean_stderr(table, ["method", "strength"], ["kl", "gold"]).sort_values(
        ["method", "strength"], ignore_index=True)


def interpolate(points: pd.DataFrame, kl: float | np.ndarray) -> float | np.ndarray:
    """Gold along ``points`` (columns ``kl``, ``gold``) sorted by KL, linear in KL."""
    points = points.sort_values("kl")
    return np.interp(kl, points["kl"].to_numpy(), points["gold"].to_numpy())


def gold_per_nat(series: Mapping[str, Any], budget: float = BUDGET) -> dict[str, Any]:
    """``GOLD_PER_NAT`` for every method: ``{method: {mean, se, per_seed}}`` (mean None
    where some seed's points stop short of ``budget``)."""
    table = pd.DataFrame(series["points"])
    sft = {s["seed"]: s["gold"] for s in series["sft"]}
    out = {}
    for method in METHODS:
        per_seed = []
        for seed, gold in sft.items():
            mine = table[(table["method"] == method) & (table["seed"] == seed)]
            if mine.empty or mine["kl"].max() < budget:
                per_seed.append(None)
                continue
            path = pd.concat([pd.DataFrame({"kl": [0.0], "gold": [gold]}),
                              mine[["kl", "gold"]]])
            per_seed.append(float((interpolate(path, budget) - gold) / budget))
        values = np.asarray([v for v in per_seed if v is not None])
        reached = len(values) == len(per_seed) and len(values) > 0
        se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        out[method] = {"mean": float(values.mean()) if reached else None,
                       "se": se if reached else None, "per_seed": per_seed}
    return out


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``) and gold per nat (``GOLD_PER_NAT``), from the raw
    series alone."""
    agg = frontier(series)
    ppo, dpo = agg[agg["method"] == "ppo"], agg[agg["method"] == "dpo"]
    lo = max(ppo["kl"].min(), dpo["kl"].min())
    hi = min(ppo["kl"].max(), dpo["kl"].max())
    matched = []
    for _, point in pd.concat([ppo, dpo]).sort_values("kl").iterrows():
        if lo <= point["kl"] <= hi:
            dpo_gold, ppo_gold = interpolate(dpo, point["kl"]), interpolate(ppo, point["kl"])
            matched.append({"method": point["method"], "strength": point["strength"],
                            "kl": point["kl"], "dpo_gold": float(dpo_gold),
                            "ppo_gold": float(ppo_gold),
                            "dpo_above": bool(dpo_gold > ppo_gold)})
    dominates = bool(matched) and all(m["dpo_above"] for m in matched)
    sft_gold = float(np.mean([s["gold"] for s in series["sft"]]))
    per_nat = gold_per_nat(series)
    reached = {m: v["mean"] for m, v in per_nat.items() if v["mean"] is not None}
    return {"passed": dominates,
            "measured": {"overlap_kl": [float(lo), float(hi)], "matched_points": matched,
                         "dpo_dominates_ppo": dominates, "sft_gold": sft_gold,
                         "budget_kl": BUDGET, "gold_per_nat": per_nat,
                         "most_gold_per_nat": max(reached, key=reached.get) if reached else None,
                         "frontier": agg.to_dict(orient="records")}}


# -- figure -------------------------------------------------------------------------------
def _label_strength(method: str, strength: float) -> str:
    return f"{STRENGTH[method]}={strength:g}"


def plot(results: Mapping[str, Any]) -> Figure:
    """Gold against KL for every method (mean ± s.e. over seeds, points labelled by their
    strength), and each method's gold per nat at the KL budget."""
    series = results["series"]
    agg = frontier(series)
    verdict = criterion(series)["measured"]
    sft_gold = verdict["sft_gold"]
    fig = Figure(figsize=(12, 4.8))
    ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    for method in METHODS:
        group = agg[agg["method"] == method].sort_values("kl")
        if group.empty:
            continue
        color = COLORS[method]
        ax.plot(np.r_[0.0, group["kl"]], np.r_[sft_gold, group["gold"]], "-", color=color,
                lw=1, alpha=0.6)
        ax.errorbar(group["kl"], group["gold"], xerr=group["kl_se"], yerr=group["gold_se"],
                    fmt="s" if method == "bon" else "o", color=color, label=LABELS[method],
                    capsize=2, ms=4, lw=1)
        for _, p in group.iterrows():
            ax.annotate(_label_strength(method, p["strength"]), (p["kl"], p["gold"]),
                        fontsize=6, xytext=(3, -9), textcoords="offset points", color=color)
    ax.plot([0.0], [sft_gold], "k*", ms=9, label="SFT policy")
    ax.axvline(BUDGET, color="#999999", lw=0.8, ls=":")
    ax.set(xlabel="KL(policy || SFT) [nats], held out (best-of-n: log n - (n-1)/n)",
           ylabel="gold reward", title="final gold reward against KL")
    ax.legend(fontsize=8, loc="lower right")
    per_nat = verdict["gold_per_nat"]
    names = [m for m in METHODS if per_nat[m]["mean"] is not None]
    bar_ax.bar([LABELS[m] for m in names], [per_nat[m]["mean"] for m in names],
               yerr=[per_nat[m]["se"] for m in names], color=[COLORS[m] for m in names],
               capsize=3)
    bar_ax.set(ylabel="(gold(K) - gold_SFT) / K", title=f"gold per nat at K = {BUDGET:g} nat")
    bar_ax.tick_params(axis="x", labelsize=8)
    n = int(agg["n"].max())
    fig.suptitle(f"Gold reward against KL from one SFT policy (mean \u00b1 s.e. over {n} "
                 "seeds; per seed one set of pairs and one reward model)")
    fig.subplots_adjust(wspace=0.25)
    return fig


def table(results: Mapping[str, Any], methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """The frontier as a table: one row per (method, strength)."""
    agg = frontier(results["series"]).set_index("method").loc[list(methods)].reset_index()
    return agg[["method", "strength", "kl", "kl_se", "gold", "gold_se", "n"]]


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
