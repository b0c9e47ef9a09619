"""A margin in the ranking loss: reward models trained with and without the Llama 2 margin
term, their held-out score gap and accuracy in bins of the gold margin (Touvron et al. 2023,
eq. 2 and the discussion of Table 28).

    python -m experiments.rm_margin.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import common
from jaxrlhf import scoring, workdir as workdir_lib
from jaxrlhf.data import preference
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.pairs import gold_pairs
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task

NAME = "rm_margin"
PAPER = ("Touvron et al. (2023), Llama 2: Open Foundation and Fine-Tuned Chat Models, eq. 2 "
         "and Table 28")
CLAIM = ("With a margin m(r) in the ranking loss, -log sigmoid(r_c - r_r - m), the reward "
         "model separates pairs by how clearly one response is better: its score gap grows "
         "with the preference margin, and accuracy on the clearest pairs improves.")
CRITERION = (
    "On held-out gold-labelled pairs binned by gold margin, with the mean score gap "
    "r_c - r_r per bin averaged over seeds: with the margin term the gap strictly increases "
    "from the least to the most clear bin; and it is flatter without the term, i.e. the "
    "relative spread (gap of the clearest bin - gap of the least clear bin) / (mean gap "
    "over bins) is smaller without the margin term than with it. Accuracy per bin is "
    "reported (not part of the pass).")
BIN_NAMES = ("negligibly better", "slightly better", "better", "significantly better")


def heldout_pairs(config: ml_collections.ConfigDict, sft_dir: str) -> dict[str, np.ndarray]:
    """Fresh pairs of SFT-policy samples labelled as the training pairs are, tokenised."""
    settings = RunSettings.from_config(config.reward)
    policy = workdir_lib.load_model(sft_dir, CausalLM)
    pairs, _ = gold_pairs(settings.reward, get_task(settings.data.task), config.heldout_pairs,
                          config.heldout_seed, policy)
    arrays, _ = preference.tokenize_pairs(
        pairs, policy.tokenizer, max_prompt_tokens=settings.reward.max_prompt_tokens,
        max_response_tokens=settings.reward.max_response_tokens)
    return arrays


def raw_gaps(reward_dir: str, arrays: Mapping[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """The reward model's raw score gap r_chosen - r_rejected of every pair [pairs]."""
    model = workdir_lib.load_reward_model(reward_dir).model
    score = jax.jit(functools.partial(scoring.last_token_scores, model.graphdef))
    gaps = []
    for start in range(0, len(arrays["margin"]), batch):
        rows = slice(start, start + batch)
        chosen = score(model.params, arrays["chosen_ids"][rows], arrays["chosen_mask"][rows])
        rejected = score(model.params, arrays["rejected_ids"][rows],
                         arrays["rejected_mask"][rows])
        gaps.append(np.asarray(chosen - rejected, np.float64))
    return np.concatenate(gaps)


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """Reward models with and without the margin term per seed; their held-out gaps."""
    sft = common.sft_policy(config, root)
    models = common.reward_models(config, root, NAME,
                                  {"reward.use_margin": [False, True], "seed": list(config.seeds)},
                                  sft)
    arrays = heldout_pairs(config, sft)
    return {"bins": list(config.margin_bins), "gold_margin": arrays["margin"].tolist(),
            "models": [{"use_margin": bool(row["reward.use_margin"]), "seed": int(row["seed"]),
                        "eval_gold_accuracy": float(row["eval/rm/gold_accuracy"]),
                        "gap": raw_gaps(row["workdir"], arrays).tolist()}
                       for _, row in models.iterrows()]}


def binned(series: Mapping[str, Any]) -> dict[bool, dict[str, np.ndarray]]:
    """Per use_margin: mean gap and accuracy per bin (seed means), and pairs per bin."""
    margin = np.asarray(series["gold_margin"])
    edges = np.asarray(series["bins"])
    which = np.digitize(margin, edges, right=True) - 1          # bin b: (edges[b], edges[b+1]]
    n_bins = len(edges) - 1
    out = {}
    for use_margin in (False, True):
        gaps = [np.asarray(m["gap"]) for m in series["models"] if m["use_margin"] == use_margin]
        per_seed_gap = [[g[which == b].mean() for b in range(n_bins)] for g in gaps]
        per_seed_acc = [[(g[which == b] > 0).mean() for b in range(n_bins)] for g in gaps]
        out[use_margin] = {"gap": np.mean(per_seed_gap, axis=0),
                           "gap_se": np.std(per_seed_gap, axis=0, ddof=1) / np.sqrt(len(gaps))
                           if len(gaps) > 1 else np.zeros(n_bins),
                           "accuracy": np.mean(per_seed_acc, axis=0),
                           "count": np.array([(which == b).sum() for b in range(n_bins)])}
    return out


def relative_spread(gap: np.ndarray) -> float:
    """(gap of the clearest bin - gap of the least clear) / mean gap over bins."""
    return float((gap[-1] - gap[0]) / np.mean(gap))


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``), from the raw series alone."""
    b = binned(series)
    monotone = bool(np.all(np.diff(b[True]["gap"]) > 0))
    spread = {use: relative_spread(b[use]["gap"]) for use in (False, True)}
    flatter = spread[False] < spread[True]
    table = {("with" if use else "without") + "_margin": {
        "gap": b[use]["gap"].tolist(), "gap_se": b[use]["gap_se"].tolist(),
        "accuracy": b[use]["accuracy"].tolist(), "relative_spread": spread[use]}
        for use in (False, True)}
    return {"passed": bool(monotone and flatter),
            "measured": {"bins": BIN_NAMES, "pairs_per_bin": b[True]["count"].tolist(),
                         "gap_increases_with_margin_term": monotone,
                         "flatter_without_margin_term": bool(flatter), **table}}


def plot(results: Mapping[str, Any]) -> Figure:
    """Score gap and accuracy per gold-margin bin, with and without the margin term."""
    b = binned(results["series"])
    edges = results["series"]["bins"]
    labels = [f"{name}\n({lo:g}, {hi:g}]" for name, lo, hi in
              zip(BIN_NAMES, edges[:-1], edges[1:])]
    x = np.arange(len(labels))
    fig = Figure(figsize=(11, 4))
    gap_ax, acc_ax = fig.subplots(1, 2)
    for use, color, offset in ((False, "#7570b3", -0.2), (True, "#d95f02", 0.2)):
        label = "with margin term" if use else "without margin term"
        gap_ax.bar(x + offset, b[use]["gap"], 0.4, yerr=b[use]["gap_se"], color=color,
                   label=label, capsize=2)
        acc_ax.plot(x, b[use]["accuracy"], "o-", color=color, label=label)
    for ax in (gap_ax, acc_ax):
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_xlabel("gold margin g_chosen - g_rejected")
        ax.legend(fontsize=8)
    gap_ax.set(ylabel="mean raw score gap r_c - r_r", title="score gap per bin")
    acc_ax.set(ylabel="accuracy (r_c > r_r)", title="held-out accuracy per bin")
    n = len(results["series"]["models"]) // 2
    fig.suptitle(f"Bradley-Terry reward models with and without the Llama 2 margin "
                 f"(mean \u00b1 s.e. over {n} seeds)")
    return fig


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
