"""The IMDb research pipeline (``configs/pipeline/imdb_research.py``) end to end at smoke
size on the fixture reviews: pretrain -> SFT -> pairs + reward model -> PPO (reward model),
PPO (gold), DPO and best-of-n, each of the last four from the SFT policy."""
import gzip
import json
import os

import pytest

from conftest import FIXTURES, read_summary, run_cli

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
    assert read_summary(workdir) == summary, again.stdout[-2000:]
