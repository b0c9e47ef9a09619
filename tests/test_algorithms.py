"""Beyond PPO, end to end from the SFT quickstart: DPO, GRPO, RLOO and best-of-n each raise
the built-in task's held-out gold reward beyond 2 standard errors with a finite KL;
critic-free runs store no value model; best-of-n keeps the best sample and reports
KL_bon; rejection-sampling fine-tuning is wired as a pipeline; the Python API sweeps them."""
import json
import math
import os

import jax
import numpy as np
import pytest

import jaxrlhf
from conftest import metric_rows, read_summary, run_cli
from jaxrlhf import checkpoint, config as config_lib, pipeline, stages as stages_lib

TRL_DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                   "rewards/margins", "logps/chosen", "logps/rejected")


def assert_raises_gold(s):
    gain = s["gold_after"] - s["gold_before"]
    assert gain > 2 * np.hypot(s["gold_before_stderr"], s["gold_after_stderr"]), s
    assert np.isfinite(s["kl"]) and s["kl"] > 0, s


def test_dpo_quickstart_raises_gold(sft_workdir, tmp_path):
    run_cli("dpo", "configs/dpo/quickstart.py", tmp_path, f"--config.policy_init={sft_workdir}",
            "--config.train.steps=60", "--config.train.eval_every=60",
            "--config.train.checkpoint_every=60")
    s = read_summary(tmp_path)
    assert_raises_gold(s)
    rows = metric_rows(tmp_path)
    assert all(name in rows[-1] and f"eval/{name}" in rows[-1] for name in TRL_DPO_METRICS)
    assert rows[0]["eval/kl"] == 0.0 and rows[0]["eval/loss"] == pytest.approx(math.log(2))
    assert s["eval_accuracy"] > 0.7     # the implicit reward ranks held-out pairs


def test_kto_quickstart_raises_gold(sft_workdir, tmp_path):
    """KTO on the SFT samples labelled by their median gold: at step 0 the policy is its
    reference (every value sigma(0), the loss lambda - lambda/2 = 0.5), and 40 steps raise
    the held-out gold."""
    run_cli("dpo", "configs/dpo/quickstart.py", tmp_path, f"--config.policy_init={sft_workdir}",
            "--config.dpo.loss=kto", "--config.reward.num_train_pairs=512",
            "--config.reward.num_eval_pairs=128", "--config.train.steps=40",
            "--config.train.eval_every=40", "--config.train.checkpoint_every=40")
    s = read_summary(tmp_path)
    assert_raises_gold(s)
    rows = metric_rows(tmp_path)
    assert rows[0]["eval/loss"] == pytest.approx(0.5, abs=1e-5)
    assert rows[0]["eval/kto/kl"] == pytest.approx(0.0, abs=1e-5)
    assert all(f"eval/{name}" in rows[-1] for name in (*TRL_DPO_METRICS, "kto/kl"))
    assert s["loss"] == "kto" and s["data_counts"]["train"]["threshold"] == pytest.approx(
        s["data_counts"]["eval"]["threshold"])


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_critic_free_quickstart_raises_gold_and_stores_no_value_model(
        method, sft_workdir, reward_workdir, tmp_path):
    run_cli("ppo", f"configs/{method}/quickstart.py", tmp_path,
            f"--config.policy_init={sft_workdir}", f"--config.reward_init={reward_workdir}")
    assert_raises_gold(read_summary(tmp_path))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ckpt = os.path.join(tmp_path, "checkpoints")
    assert checkpoint.restore_subtree(ckpt, "value", device)[1] is None
    assert checkpoint.restore_subtree(ckpt, "value_opt", device)[1] is None
    assert "loss/value" not in metric_rows(tmp_path)[-1]


def test_bon_command_keeps_the_best_and_raises_gold(sft_workdir, reward_workdir, tmp_path):
    run_cli("bon", f"--checkpoint={sft_workdir}", f"--reward={reward_workdir}", "--n=16",
            f"--workdir={tmp_path}", "--config=configs/bon/quickstart.py")
    s = read_summary(tmp_path)
    assert_raises_gold(s)
    assert s["kl"] == pytest.approx(math.log(16) - 15 / 16)
    pool = np.load(tmp_path / "pool.npz")
    chosen = [json.loads(line) for line in (tmp_path / "best_of_n.jsonl").read_text().splitlines()]
    assert len(chosen) == 128 and all(set(r) >= {"prompt", "completion"} for r in chosen)
    np.testing.assert_allclose([r["score"] for r in chosen], pool["score"].max(-1), rtol=1e-6)
    curve = metric_rows(tmp_path)
    assert [r["bon/n"] for r in curve] == [1, 2, 4, 8, 16]
    proxy = [r["bon/proxy"] for r in curve]
    assert proxy == sorted(proxy)       # the proxy of best-of-n rises with n
    assert curve[-1]["bon/gold"] == pytest.approx(s["gold_after"])


def test_expert_iteration_pipeline_is_wired_bon_then_sft():
    config = config_lib.load_config_file("configs/pipeline/expert_iteration.py")
    config.lock()
    stages = pipeline.stage_configs(config, "/runs/ei")
    assert [command for _, _, command in stages.values()] == ["sft", "reward", "bon", "sft"]
    assert stages["bon"][0].policy_init == "/runs/ei/sft"
    assert stages["bon"][0].reward_init == "/runs/ei/reward"
    assert stages["bon"][0].bon.split == "train"
    assert stages["rs_sft"][0].policy_init == "/runs/ei/sft"
    assert stages["rs_sft"][0].data.source == "/runs/ei/bon/best_of_n.jsonl"
    stages_lib.validate("pipeline", config, 1)


@pytest.mark.slow
def test_rejection_sampling_fine_tuning_raises_gold(tmp_path):
    run_cli("pipeline", "configs/pipeline/expert_iteration.py", tmp_path, timeout=1200)
    s = read_summary(tmp_path)
    assert s["stages"] == ["sft", "reward", "bon", "rs_sft"]
    assert_raises_gold(s["rs_sft"])


def test_api_sweeps_best_of_n_and_runs_reference_free_dpo(sft_workdir, reward_workdir, tmp_path):
    """What the algorithms comparison needs: each method from a config at a chosen strength
    and seed, with PPO's summary keys."""
    base = jaxrlhf.load_config("configs/bon/quickstart.py", policy_init=sft_workdir,
                               **{"reward_init": reward_workdir, "bon.num_prompts": 32,
                                  "bon.batch_size": 128})
    table = jaxrlhf.sweep("bon", base, {"bon.n": [1, 4]}, str(tmp_path / "bon"), progress=False)
    keys = ("gold_before", "gold_before_stderr", "gold_after", "gold_after_stderr", "kl")
    assert all(k in table for k in keys)
    assert list(table["kl"]) == [0.0, pytest.approx(math.log(4) - 3 / 4)]
    assert table.loc[0, "gold_after"] == pytest.approx(table.loc[0, "gold_before"])
    assert table.loc[1, "gold_after"] > table.loc[0, "gold_after"]

    config = jaxrlhf.load_config(
        "configs/dpo/quickstart.py", policy_init=sft_workdir,
        **{"dpo.loss": "simpo", "dpo.beta": 2.0, "train.steps": 4, "train.eval_every": 4,
           "train.checkpoint_every": 4, "reward.num_train_pairs": 64,
           "reward.num_eval_pairs": 32, "sampling.num_eval_prompts": 16, "train.tensorboard": False})
    result = jaxrlhf.run("dpo", config, str(tmp_path / "simpo"))
    assert all(np.isfinite(result.summary[k]) for k in keys)
    assert result.summary["loss"] == "simpo"
    assert result.metrics["rewards/margins"].notna().any()


def test_dpo_learns_from_trl_rows(sft_workdir, tmp_path):
    """File pairs (TRL ``{prompt, chosen, rejected}`` rows, as the reward stage reads them):
    DPO trains and reports its pair metrics; with no task labels there is no gold."""
    rows = [{"prompt": "the movie was", "chosen": f" {good} .", "rejected": f" {bad} ."}
            for good, bad in [("amazing", "awful"), ("good", "dull"), ("nice", "poor"),
                              ("excellent", "terrible")] * 24]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = jaxrlhf.load_config(
        "configs/dpo/quickstart.py", policy_init=sft_workdir,
        **{"data.source": str(source), "reward.num_train_pairs": 64,
           "reward.num_eval_pairs": 32, "train.batch_size": 16, "train.steps": 8,
           "train.eval_every": 8, "train.checkpoint_every": 8, "dpo.loss": "ipo",
           "train.tensorboard": False})
    result = jaxrlhf.run("dpo", config, str(tmp_path / "dpo"))
    assert "gold_after" not in result.summary
    evals = result.metrics.dropna(subset=["eval/loss"])
    assert evals["eval/rewards/margins"].iloc[-1] > evals["eval/rewards/margins"].iloc[0]
    assert result.summary["eval_accuracy"] > 0.9
