"""The main job end to end at reduced size, and resuming it after an interruption in PPO."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ("--config.sft.train.steps=300", "--config.reward.train.steps=150",
         "--config.reward.reward.num_train_pairs=1024", "--config.ppo.train.steps=16",
         "--config.ppo.train.eval_every=8", "--config.ppo.train.checkpoint_every=4",
         "--config.sft.train.tensorboard=False", "--config.reward.train.tensorboard=False",
         "--config.ppo.train.tensorboard=False")


def _pipeline(workdir, *overrides):
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "jaxrlhf", "pipeline", "--config=configs/pipeline/quickstart.py",
         f"--workdir={workdir}", *SMALL, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    summary.pop("wall_seconds")
    return summary


def test_pipeline_improves_gold_and_resumes_exactly(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _pipeline(straight)
    s = _summary(straight)
    for key in ("report.md", "figures/ppo_reward_vs_kl.png", "figures/sft_eval_loss.png",
                "figures/reward_calibration.png", "figures/ppo_training.png"):
        assert (straight / key).exists(), key
    assert s["sft"]["eval_loss"] < s["sft"]["unigram_entropy"] - 1.0
    assert s["reward"]["eval_accuracy"] > 0.8
    ppo = s["ppo"]
    assert ppo["gold_after"] - ppo["gold_before"] > 3 * (
        ppo["gold_before_stderr"] ** 2 + ppo["gold_after_stderr"] ** 2) ** 0.5, ppo
    assert ppo["kl"] == ppo["kl"] and abs(ppo["kl"]) < 100  # finite

    # Stop in the middle of PPO (after 6 of 16 iterations), then re-run the same command.
    _pipeline(interrupted, "--config.ppo.train.run_steps=6")
    resumed = _pipeline(interrupted)
    assert "resuming from step 6" in resumed.stdout
    assert _summary(interrupted) == s


@pytest.mark.slow
def test_imdb_sentiment_pipeline_runs(tmp_path):
    """The IMDb pipeline at reduced length: it runs end to end and PPO raises P(positive)."""
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "jaxrlhf", "pipeline",
         "--config=configs/pipeline/imdb_sentiment.py", f"--workdir={tmp_path}",
         "--config.sft.train.steps=600", "--config.reward.train.steps=150",
         "--config.ppo.train.steps=30"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    ppo = _summary(tmp_path)["ppo"]
    assert ppo["gold_after"] > ppo["gold_before"], ppo
