"""The IMDb research pipeline (``configs/pipeline/imdb_research.py``) end to end at smoke
size on the fixture reviews: pretrain -> SFT -> pairs + reward model -> PPO (reward model),
PPO (gold), DPO and best-of-n, each of the last four from the SFT policy."""
import gzip
import json
import os

import pytest

from conftest import FIXTURES, read_summary, run_cli
from experiments.imdb_research import collect

CONFIG = "configs/pipeline/imdb_research.py:smoke"


@pytest.fixture
def imdb_fixture_dirs(tmp_path, monkeypatch):
    """A data dir holding the fixture reviews as IMDb train (16) and test (8) splits, and
    an empty task cache (so the tokenizer and gold classifier are trained on them)."""
    with open(os.path.join(FIXTURES, "imdb_synthetic.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    os.makedirs(tmp_path / "data" / "imdb")
    for split, part in (("train", rows[:16]), ("test", rows[16:])):
        with gzip.open(tmp_path / "data" / "imdb" / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in part)
    monkeypatch.setenv("JAXRLHF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JAXRLHF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_imdb_research_smoke_pipeline_runs_every_method_from_one_sft_policy(
        imdb_fixture_dirs):
    workdir = imdb_fixture_dirs / "run"
    run_cli("pipeline", CONFIG, workdir, timeout=900)
    summary = read_summary(workdir)
    assert summary["stages"] == ["pretrain", "sft", "reward", "ppo", "ppo_gold", "dpo", "bon"]
    stage_seconds = summary["stage_wall_seconds"]
    assert set(stage_seconds) == set(summary["stages"]) and min(stage_seconds.values()) > 0
    for name in ("sft", "ppo", "ppo_gold", "dpo", "bon"):
        stage = summary[name]
        for key in ("gold_before", "gold_after", "gold_prob_before", "gold_prob_after", "kl"):
            assert key in stage, (name, key)
        assert 0.0 < stage["gold_prob_after"] < 1.0
    # every method starts from the SFT policy, so they see the same SFT gold on the same
    # held-out prompts and sampling settings
    before = {summary[name]["gold_before"] for name in ("ppo", "ppo_gold", "dpo")}
    assert len(before) == 1, before
    for name in ("ppo", "ppo_gold", "dpo", "bon"):
        with open(workdir / name / "config.json") as f:
            assert json.load(f)["policy_init"] == str(workdir / "sft")
    # the reward model is the best-evaluated checkpoint, and the pairs follow the recipe
    reward = summary["reward"]
    with open(workdir / "reward" / "metrics.jsonl") as f:
        losses = {row["step"]: row["eval/rm/loss"] for row in map(json.loads, f)
                  if "eval/rm/loss" in row}
    assert reward["step"] == min(losses, key=losses.get)
    assert reward["data_counts"]["train"]["candidates"] == 96   # 6 pairs x 16 prompts

    again = run_cli("pipeline", CONFIG, workdir, timeout=900)      # finished: resumes nothing
    # (nor adds to any stage's wall time)
    assert read_summary(workdir) == summary, again.stdout[-2000:]

    results = collect.collect(str(workdir))          # what results.json holds, at smoke size
    assert set(results["methods"]) == set(collect.METHODS)
    assert results["stage_wall_seconds"] == stage_seconds
    assert [p["step"] for p in results["reward"]["curve"]] == sorted(losses)
    for name, method in results["methods"].items():
        assert len(method["samples"]) == collect.NUM_SAMPLES, name
        assert method["points"][0]["kl"] == pytest.approx(0.0, abs=1e-6), name
    bon_points = results["methods"]["bon"]["points"]
    assert [p["step"] for p in bon_points] == [1, 2, 4]          # n' up to the pool of 4
    assert bon_points[-1]["gold"] == pytest.approx(summary["bon"]["gold_after"], abs=1e-5)
    assert bon_points[0]["gold"] == pytest.approx(summary["bon"]["gold_before"], abs=1e-5)
    assert set(collect.checks(results)["checks"]) == {
        "gate", "ppo_gain_beyond_2se", "ppo_per_nat_3x", "ppo_gold_above_ppo_rm"}


def _results(agreement=0.85, rm_loss=0.5, gain=1.0, kl=5.0, gold_curve=(0.0, 1.5, 3.0)):
    """Synthetic results: PPO-RM gains ``gain`` logit (s.e. 0.1) and 0.3 P(positive) at
    ``kl``; PPO-gold's gold at KL 0, 5, 10 is ``gold_curve``."""
    def points(golds, kls):
        return [{"step": 10 * i, "kl": k, "gold": g} for i, (g, k) in enumerate(zip(golds, kls))]
    ppo = {"gold_before": 0.0, "gold_after": gain, "gold_before_stderr": 0.1,
           "gold_after_stderr": 0.1, "gold_prob_before": 0.5, "gold_prob_after": 0.8, "kl": kl,
           "points": points((0.0, gain / 2, gain), (0.0, kl / 2, kl))}
    return {"reward": {"gold_accuracy": agreement, "loss": rm_loss},
            "methods": {"ppo": ppo, "ppo_gold": {"points": points(gold_curve, (0, 5, 10))}},
            "previous_ppo": collect.PREVIOUS_PPO}


def test_gate_and_targets_pass_and_fail_where_they_should():
    assert collect.checks(_results())["passed"]
    for bad, failed in ((dict(agreement=0.79), "gate"), (dict(rm_loss=0.70), "gate"),
                        (dict(gain=0.25), "ppo_gain_beyond_2se"),
                        (dict(kl=20.0), "ppo_per_nat_3x"),
                        (dict(gold_curve=(0.0, 0.4, 3.0)), "ppo_gold_above_ppo_rm")):
        verdict = collect.checks(_results(**bad))
        assert not verdict["passed"] and not verdict["checks"][failed], bad
    # 0.3 P(positive) over 5 nats = 0.06 per nat, 3.75x the previous 0.016
    assert collect.checks(_results())["measured"]["per_nat_ratio"] == pytest.approx(
        0.06 / (0.1994 / 12.44), rel=1e-3)
    # PPO-gold never evaluated as far as PPO-RM's KL: no matched point, the target fails
    far = collect.checks(_results(kl=30.0, gold_curve=(0, 1, 2)))
    assert far["measured"]["matched_kl"] == [] and not far["checks"]["ppo_gold_above_ppo_rm"]


def test_committed_results_follow_from_their_numbers():
    """The committed verdict is recomputed from ``results.json``; the README states the gate
    and targets as they were written before the run, and the verdict."""
    with open(os.path.join(collect.HERE, collect.RESULTS_FILE)) as f:
        results = json.load(f)
    assert collect.checks(results) == results["verdict"]
    assert (results["gate"], results["targets"]) == (collect.GATE, collect.TARGETS)
    with open(os.path.join(collect.HERE, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert collect.GATE in readme and collect.TARGETS in readme
    assert ("**PASS**" if results["verdict"]["passed"] else "**FAIL**") in readme
    assert set(results["stage_wall_seconds"]) == {
        "pretrain", "sft", "reward", "ppo", "ppo_gold", "dpo", "bon"}
