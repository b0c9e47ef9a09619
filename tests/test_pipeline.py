"""The main job end to end at reduced size, and resuming it after an interruption in PPO."""
import shutil

from conftest import read_summary, run_cli

SMALL = ("--config.sft.train.steps=300", "--config.reward.train.steps=150",
         "--config.reward.reward.num_train_pairs=1024", "--config.ppo.train.steps=16",
         "--config.ppo.train.eval_every=8", "--config.ppo.train.checkpoint_every=4",
         "--config.sft.train.tensorboard=False", "--config.reward.train.tensorboard=False",
         "--config.ppo.train.tensorboard=False")


def _pipeline(workdir, *overrides):
    return run_cli("pipeline", "configs/pipeline/quickstart.py", workdir, *SMALL, *overrides,
                   timeout=900)


def test_pipeline_improves_gold_and_resumes_exactly(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _pipeline(straight)
    s = read_summary(straight)
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
    # The finished SFT and reward stages are the straight run's: the pipeline finds them done
    # and reuses them without running them again.
    for stage in ("sft", "reward"):
        shutil.copytree(straight / stage, interrupted / stage)
    stopped = _pipeline(interrupted, "--config.ppo.train.run_steps=6")
    for stage in ("sft", "reward"):
        assert f"=== pipeline stage: {stage} finished" in stopped.stdout, stopped.stdout[-2000:]
    assert "resuming from step" not in stopped.stdout
    resumed = _pipeline(interrupted)
    assert "resuming from step 6" in resumed.stdout
    assert read_summary(interrupted) == s
