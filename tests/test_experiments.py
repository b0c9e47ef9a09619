"""The paper-figure experiments: each committed verdict is recomputed from its raw series,
each runner runs end to end at smoke size, and each criterion passes and fails where it
should on synthetic series."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_same_numbers
from experiments import common
from notebooks.run import kernel_environment

EXPERIMENTS = ["rl_overoptimization", "kl_frontier", "rm_margin", "ptx_alignment_tax",
               "algorithms_frontier", "algorithms_frontier_recipe"]


def module(name):
    return importlib.import_module(f"experiments.{name}.run")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_verdict_follows_from_its_series(name):
    experiment, result = module(name), common.load(name)
    verdict = experiment.criterion(result["series"])
    assert verdict["passed"] == result["passed"]
    assert_same_numbers(json.loads(json.dumps(verdict["measured"], default=float)),
                        result["measured"])
    assert result["criterion"] == experiment.CRITERION and result["claim"] == experiment.CLAIM
    folder = os.path.join(REPO, "experiments", name)
    assert os.path.exists(os.path.join(folder, common.FIGURE_FILE))
    with open(os.path.join(folder, "README.md")) as f:
        readme = f.read()
    assert experiment.CRITERION in " ".join(readme.split()), "the README states the criterion"
    assert ("**PASS**" if result["passed"] else "**FAIL**") in readme


# algorithms_frontier_recipe's runner reuses algorithms_frontier's (smoke-tested by default)
# with its own points; its smoke run is in -m slow.
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "algorithms_frontier_recipe" else n
    for n in EXPERIMENTS])
def test_runner_at_smoke_size(name, smoke_root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}.run",
         f"--config=configs/experiments/{name}.py:smoke", f"--workdir={smoke_root / 'runs'}",
         f"--out={out}"],
        cwd=REPO, env=kernel_environment(True), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / common.RESULTS_FILE) as f:
        result = json.load(f)
    assert result["passed"] == module(name).criterion(result["series"])["passed"]
    assert result["wall_seconds"] > 0 and result["config"]["seeds"] == [0]
    assert (out / common.FIGURE_FILE).stat().st_size > 10_000


# -- each criterion on synthetic series: one that passes, and ways it fails ---------------
def _rl_series(gold_shape):
    steps = list(range(0, 50, 5))
    kl = np.linspace(0.0, 9.0, len(steps))
    def run(seed):
        return {"seed": seed, "step": steps, "kl": kl.tolist(),
                "gold": gold_shape(np.sqrt(kl)).tolist(),
                "proxy": (0.3 * np.sqrt(kl) + 0.01 * seed).tolist()}
    return {"proxies": [{"pairs": pairs, "rm_accuracy": 0.8, "rm_gold_accuracy": 0.8,
                         "runs": [run(0), run(1)]} for pairs in (64, 256)]}


def test_rl_overoptimization_criterion():
    criterion = module("rl_overoptimization").criterion
    def peaked(d):
        return d * (1.0 - 0.8 * np.log(np.maximum(d, 1e-9)))   # peaks at d = exp(0.25)
    result = criterion(_rl_series(peaked))
    assert result["passed"], result["measured"]["checks"]
    assert result["measured"]["proxies"][0]["fit"]["r2"] == pytest.approx(1.0)
    assert result["measured"]["proxies"][0]["fit"]["beta"] == pytest.approx(0.8)
    assert not criterion(_rl_series(lambda d: 0.2 * d))["passed"]          # gold never falls
    series = _rl_series(peaked)
    for run in series["proxies"][0]["runs"]:                                 # proxy falls too
        run["proxy"] = run["gold"]
    assert not criterion(series)["measured"]["checks"]["proxy_keeps_rising"]


def _frontier_points(gold_offset, kl_of):
    points = []
    for source, offset in (("gold", gold_offset), ("model", 0.0)):
        for beta in (0.01, 0.1, 1.0):
            for seed in (0, 1):
                kl = kl_of(beta) * (1 + 0.01 * seed)
                points.append({"source": source, "kl_coef": beta, "seed": seed, "kl": kl,
                               "gold": 0.3 * np.sqrt(kl) + offset + 0.001 * seed,
                               "gold_stderr": 0.01, "score": 1.0, "gold_before": 0.0})
    return {"proxy": {}, "points": points}


def test_kl_frontier_criterion():
    criterion = module("kl_frontier").criterion
    assert criterion(_frontier_points(0.1, lambda b: 1.0 / b))["passed"]
    worse = criterion(_frontier_points(-0.1, lambda b: 1.0 / b))
    assert not worse["passed"] and worse["measured"]["matched_points"]
    assert not criterion(_frontier_points(0.1, lambda b: b))["passed"]      # KL rises with beta


def _margin_series(with_gap, without_gap):
    rng = np.random.default_rng(0)
    margin = rng.choice([0.1, 0.4, 0.75, 1.5], size=400)
    models = [{"use_margin": use, "seed": seed, "eval_gold_accuracy": 0.9,
               "gap": (gap(margin) + 0.01 * rng.normal(size=400)).tolist()}
              for use, gap in ((False, without_gap), (True, with_gap)) for seed in (0, 1)]
    return {"bins": [0.0, 0.25, 0.5, 1.0, 2.0], "gold_margin": margin.tolist(),
            "models": models}


def test_rm_margin_criterion():
    criterion = module("rm_margin").criterion
    steep, flat = (lambda m: 1.0 + 3.0 * m), (lambda m: 5.0 + 0.5 * m)
    assert criterion(_margin_series(steep, flat))["passed"]
    assert not criterion(_margin_series(flat, steep))["passed"]             # steeper without
    assert not criterion(_margin_series(lambda m: 3.0 - m, flat))["passed"]  # not increasing


def _ptx_series(rise, gain):
    runs = [{"ptx_coef": coef, "seed": seed, "gold_before": 0.0, "gold": gain[coef],
             "kl": 2.0, "score": 1.0, "loss": 1.5 + rise[coef] + 0.001 * seed}
            for coef in (0.0, 0.1) for seed in (0, 1)]
    return {"sft_loss": 1.5, "runs": runs}


def test_ptx_alignment_tax_criterion():
    criterion = module("ptx_alignment_tax").criterion
    assert criterion(_ptx_series({0.0: 0.4, 0.1: 0.1}, {0.0: 0.9, 0.1: 0.85}))["passed"]
    assert not criterion(_ptx_series({0.0: 0.4, 0.1: 0.3}, {0.0: 0.9, 0.1: 0.85}))["passed"]
    assert not criterion(_ptx_series({0.0: 0.4, 0.1: 0.1}, {0.0: 0.9, 0.1: 0.5}))["passed"]
    assert not criterion(_ptx_series({0.0: -0.1, 0.1: -0.2}, {0.0: 0.9, 0.1: 0.9}))["passed"]


def _algorithms_series(dpo_gain, dpo_kls=(0.3, 1.0, 3.0)):
    """Every method at three strengths and two seeds, gold = SFT gold + gain(KL); PPO's gain
    is sqrt(KL) / 2 at KL 0.2, 0.8, 2.5; DPO's is ``dpo_gain`` at ``dpo_kls``."""
    sft = {0: 0.0, 1: 0.02}
    shapes = {m: ((0.2, 0.8, 2.5), lambda kl: 0.5 * np.sqrt(kl))
              for m in ("ppo", "grpo", "rloo", "ipo")}
    shapes["dpo"] = (dpo_kls, dpo_gain)
    shapes["bon"] = ((0.2, 0.6), lambda kl: 0.5 * np.sqrt(kl))          # never reaches 1 nat
    points = [{"method": m, "strength": float(i), "seed": seed, "kl": kl * (1 + 0.01 * seed),
               "gold": sft[seed] + gain(kl), "score": None}
              for m, (kls, gain) in shapes.items() for i, kl in enumerate(kls)
              for seed in sft]
    return {"sft": [{"seed": s, "gold": g} for s, g in sft.items()], "reward_models": [],
            "points": points}


def test_algorithms_frontier_criterion():
    experiment = module("algorithms_frontier")
    criterion = experiment.criterion
    above = criterion(_algorithms_series(lambda kl: 0.6 * np.sqrt(kl)))
    assert above["passed"] and len(above["measured"]["matched_points"]) == 4  # 0.3, 0.8, 1, 2.5
    assert above["measured"]["most_gold_per_nat"] == "dpo"
    below = criterion(_algorithms_series(lambda kl: 0.4 * np.sqrt(kl)))
    assert not below["passed"] and below["measured"]["matched_points"]
    crossing = criterion(_algorithms_series(lambda kl: 0.3 + 0.1 * kl))   # above, then below
    assert not crossing["passed"]
    assert any(m["dpo_above"] for m in crossing["measured"]["matched_points"])
    apart = criterion(_algorithms_series(lambda kl: kl, dpo_kls=(3.0, 4.0, 5.0)))
    assert not apart["passed"] and not apart["measured"]["matched_points"]  # no overlap


def test_gold_per_nat_interpolates_from_the_sft_policy():
    per_nat = module("algorithms_frontier").gold_per_nat(
        _algorithms_series(lambda kl: 0.6 * np.sqrt(kl)))
    # seed 0, PPO: between (0.8, 0.5 sqrt 0.8) and (2.5, 0.5 sqrt 2.5), linear at KL 1.
    a, b = 0.5 * np.sqrt(0.8), 0.5 * np.sqrt(2.5)
    assert per_nat["ppo"]["per_seed"][0] == pytest.approx(a + (b - a) * 0.2 / 1.7)
    # seed 1: KLs scaled by 1.01, gold shifted by the seed's SFT gold, which is subtracted.
    a1 = per_nat["ppo"]["per_seed"][1]
    assert a1 == pytest.approx(a + (b - a) * (1 - 0.808) / (2.525 - 0.808))
    assert per_nat["ppo"]["mean"] == pytest.approx((per_nat["ppo"]["per_seed"][0] + a1) / 2)
    assert per_nat["ppo"]["se"] == pytest.approx(abs(per_nat["ppo"]["per_seed"][0] - a1) / 2)
    assert per_nat["bon"] == {"mean": None, "se": None, "per_seed": [None, None]}
    short = module("algorithms_frontier").gold_per_nat(
        _algorithms_series(lambda kl: kl), budget=0.1)         # below every first point
    assert short["ppo"]["per_seed"][0] == pytest.approx(0.5 * np.sqrt(0.2) / 0.2)


def _recipe_series(dpo_gain, dpo_kls=(0.3, 1.0, 3.0)):
    """PPO and DPO at two strengths and two seeds, three checkpoints each (step 0 the SFT
    policy at KL 0): PPO's gold is sqrt(KL) / 2 at KL 0.2, 0.8, 2.5 (the second strength at
    half those KLs); DPO's is ``dpo_gain`` at ``dpo_kls`` (likewise)."""
    shapes = {"ppo": ((0.2, 0.8, 2.5), lambda kl: 0.5 * np.sqrt(kl)),
              "dpo": (dpo_kls, dpo_gain)}
    points = []
    for method, (kls, gain) in shapes.items():
        for strength, scale in ((0.1, 1.0), (1.0, 0.5)):
            for seed in (0, 1):
                for step, kl in zip((0, 10, 20, 30), (0.0, *kls)):
                    kl = scale * kl * (1 + 0.01 * seed)
                    points.append({"method": method, "strength": strength, "seed": seed,
                                   "step": step, "kl": kl, "gold": gain(kl) + 0.001 * seed})
    return {"reward_models": [], "points": points}


def test_algorithms_frontier_recipe_criterion_compares_envelopes_of_every_checkpoint():
    experiment = module("algorithms_frontier_recipe")
    criterion = experiment.criterion
    above = criterion(_recipe_series(lambda kl: 0.6 * np.sqrt(kl)))
    assert above["passed"] and above["measured"]["matched_points"]
    assert all(m["step"] > 0 for m in above["measured"]["matched_points"])  # step 0 left out
    below = criterion(_recipe_series(lambda kl: 0.4 * np.sqrt(kl)))
    assert not below["passed"] and below["measured"]["matched_points"]
    apart = criterion(_recipe_series(lambda kl: kl, dpo_kls=(6.0, 8.0, 10.0)))
    assert not apart["passed"] and not apart["measured"]["matched_points"]
    # the plateau moved when DPO's best point clears the original's by > 2 combined s.e.
    high = criterion(_recipe_series(lambda kl: 0.9 + 0.0 * kl))["measured"]
    assert high["plateau_moved"] and high["dpo_best"]["gold"] == pytest.approx(0.9005)
    flat = criterion(_recipe_series(lambda kl: experiment.PLATEAU_GOLD + 0.0 * kl))["measured"]
    assert not flat["plateau_moved"]


def test_an_envelope_keeps_the_points_nothing_to_their_left_beats():
    import pandas as pd
    points = pd.DataFrame({"kl": [0.5, 1.0, 1.5, 2.0, 2.5], "gold": [0.3, 0.6, 0.5, 0.7, 0.7]})
    kept = module("algorithms_frontier_recipe").envelope(points)
    assert kept["kl"].tolist() == [0.5, 1.0, 2.0, 2.5]
