"""The alignment tax and PPO-ptx: PPO raises the gold reward while the policy's language
modelling of held-out demonstrations gets worse; mixing the pretraining (here: SFT) gradient
into PPO should keep that loss down at similar reward (Ouyang et al. 2022, eq. 2, Sec. 4.2).

    python -m experiments.ptx_alignment_tax.run [--config=...:smoke] [--workdir=DIR]
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments import common
from jaxrlhf import losses, workdir as workdir_lib
from jaxrlhf.analysis import mean_stderr
from jaxrlhf.data import sft as sft_data
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.tasks import get_task

NAME = "ptx_alignment_tax"
PAPER = ("Ouyang et al. (2022), Training Language Models to Follow Instructions with Human "
         "Feedback (InstructGPT), eq. 2 and Sec. 4.2")
CLAIM = ("RLHF with PPO pays an alignment tax — the policy gets worse at modelling the "
         "pretraining distribution — and mixing pretraining gradients into PPO (PPO-ptx) "
         "greatly reduces that tax without lowering the reward much.")
HALVED, SIMILAR = 0.5, 0.8
CRITERION = (
    "With means over seeds: plain PPO (ptx_coef 0) raises the held-out LM loss of the policy "
    "on demonstrations above the SFT policy's (the tax, > 0); and for at least one "
    f"ptx_coef > 0 of the grid the rise is at most {HALVED:g} x plain PPO's while its gold "
    f"gain over the SFT policy is at least {SIMILAR:g} x plain PPO's gold gain.")


def heldout_loss(policy_dir: str, examples: list[dict], max_len: int,
                 batch: int = 128) -> float:
    """Token-weighted mean NLL of a policy on demonstrations (responses and EOS)."""
    policy = workdir_lib.load_model(policy_dir, CausalLM)
    arrays = sft_data.tokenize_sft(examples, policy.tokenizer, max_len)
    nll = jax.jit(functools.partial(losses.lm_nll, policy.graphdef))
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), batch):
        rows = {k: arrays[k][start:start + batch]
                for k in ("input_ids", "attention_mask", "loss_mask")}
        mean, metrics = nll(policy.params, rows)
        total += float(mean) * float(metrics["tokens"])
        tokens += float(metrics["tokens"])
    return total / tokens


def run(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """PPO per ptx coefficient and seed against one reward model; gold and held-out loss."""
    sft = common.sft_policy(config, root)
    proxy = common.reward_models(config, root, "proxies",
                                 {"reward.num_train_pairs": [config.proxy_pairs]}, sft).iloc[0]
    table = common.ppo_runs(config, root, NAME,
                            {"ppo.ptx_coef": list(config.ptx_coefs), "seed": list(config.seeds)},
                            sft, {"reward_init": proxy["workdir"]})
    demos = get_task(config.ppo.data.task).demonstrations(config.heldout_demos,
                                                          seed=config.heldout_seed)
    max_len = config.ppo.data.max_len
    return {"sft_loss": heldout_loss(sft, demos, max_len),
            "runs": [{"ptx_coef": float(row["ppo.ptx_coef"]), "seed": int(row["seed"]),
                      "gold_before": float(row["gold_before"]), "gold": float(row["gold_after"]),
                      "kl": float(row["kl"]), "score": float(row["score_after"]),
                      "loss": heldout_loss(row["workdir"], demos, max_len)}
                     for _, row in table.iterrows()]}


def per_coef(series: Mapping[str, Any]) -> pd.DataFrame:
    """Mean and s.e. over seeds per ptx_coef of the gold gain, the LM-loss rise and KL."""
    table = pd.DataFrame(series["runs"])
    table["gold_gain"] = table["gold"] - table["gold_before"]
    table["loss_rise"] = table["loss"] - series["sft_loss"]
    return mean_stderr(table, "ptx_coef", ["gold", "gold_gain", "loss_rise", "kl"]).sort_values(
        "ptx_coef", ignore_index=True)


def criterion(series: Mapping[str, Any]) -> dict[str, Any]:
    """The pass criterion (``CRITERION``), from the raw series alone."""
    agg = per_coef(series)
    plain = agg[agg["ptx_coef"] == 0.0].iloc[0]
    tax = float(plain["loss_rise"])
    checks = []
    for _, row in agg[agg["ptx_coef"] > 0].iterrows():
        checks.append({"ptx_coef": float(row["ptx_coef"]),
                       "loss_rise_ratio": float(row["loss_rise"]) / tax if tax > 0 else None,
                       "gold_gain_ratio": float(row["gold_gain"] / plain["gold_gain"])
                       if plain["gold_gain"] > 0 else None})
    good = [c for c in checks if c["loss_rise_ratio"] is not None
            and c["gold_gain_ratio"] is not None and c["loss_rise_ratio"] <= HALVED
            and c["gold_gain_ratio"] >= SIMILAR]
    return {"passed": bool(tax > 0 and good),
            "measured": {"sft_heldout_loss": series["sft_loss"], "plain_ppo_loss_rise": tax,
                         "plain_ppo_gold_gain": float(plain["gold_gain"]),
                         "per_coef": checks, "passing_coefs": [c["ptx_coef"] for c in good],
                         "table": agg.to_dict(orient="records")}}


def plot(results: Mapping[str, Any]) -> Figure:
    """Gold reward against the rise of the held-out LM loss, one point per ptx_coef."""
    agg = per_coef(results["series"])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.errorbar(agg["loss_rise"], agg["gold"], xerr=agg["loss_rise_se"], yerr=agg["gold_se"],
                fmt="o", color="#d95f02", capsize=2)
    for _, p in agg.iterrows():
        ax.annotate(f"ptx {p['ptx_coef']:g}", (p["loss_rise"], p["gold"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    before = np.mean([r["gold_before"] for r in results["series"]["runs"]])
    ax.axhline(before, color="#999999", lw=0.8, ls=":", label="SFT policy gold")
    ax.axvline(0.0, color="#999999", lw=0.8, ls="--", label="SFT policy LM loss")
    ax.set(xlabel="held-out LM loss on demonstrations minus the SFT policy's [nats/token]",
           ylabel="gold reward", title=f"PPO-ptx (mean \u00b1 s.e. over {int(agg['n'].max())} seeds)")
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    import sys
    common.main(sys.modules[__name__])
