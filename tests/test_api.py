"""The notebook API: dotted overrides, runs in-process, sweeps that resume and never mix
configs."""
import dataclasses

import pytest

import jaxrlhf
from jaxrlhf import api, stages
from jaxrlhf.errors import ConfigError

SFT = "configs/sft/quickstart.py"
TINY = {"model.d_model": 32, "model.d_ff": 64, "data.num_train": 64, "data.num_eval": 32,
        "train.batch_size": 16, "train.steps": 4, "train.log_every": 1, "train.eval_every": 2,
        "train.checkpoint_every": 2, "train.num_samples": 0, "train.tensorboard": False}


def test_load_config_applies_dotted_overrides():
    config = jaxrlhf.load_config("configs/ppo/quickstart.py", **{"ppo.kl_coef": 0.2, "seed": 3})
    assert config.ppo.kl_coef == 0.2 and config.seed == 3
    assert config.train.steps == 40  # the file's own value where nothing overrides it
    with pytest.raises(ValueError, match=r"unknown config field 'kl_coef'; did you mean "
                                         r"'ppo.kl_coef'\?"):
        jaxrlhf.load_config("configs/ppo/quickstart.py", kl_coef=0.2)
    with pytest.raises(ConfigError, match="config.ppo.kl_estimator=3"):
        jaxrlhf.load_config("configs/ppo/quickstart.py", **{"ppo.kl_estimator": 3})
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked


def test_sweep_runs_resumes_and_refuses_mixed_configs(tmp_path, monkeypatch, capsys):
    base = jaxrlhf.load_config(SFT, **TINY, **{"train.run_steps": 2})
    grid = {"seed": [0, 1]}
    partial = jaxrlhf.sweep("sft", base, grid, str(tmp_path), progress=False)
    assert list(partial["seed"]) == [0, 1] and list(partial["step"]) == [2, 2]

    # the same sweep without the invocation limit resumes each point where it stopped
    full = jaxrlhf.sweep("sft", api.with_overrides(base, {"train.run_steps": 0}), grid,
                         str(tmp_path), progress=False)
    assert "resuming from step 2" in capsys.readouterr().out
    assert list(full["step"]) == [4, 4]
    assert full["eval_loss"].notna().all() and full.loc[0, "eval_loss"] != full.loc[1, "eval_loss"]

    # finished points are read back, not run again
    monkeypatch.setitem(stages.STAGES, "sft", dataclasses.replace(
        stages.STAGES["sft"], train=lambda *a: pytest.fail("ran again")))
    again = jaxrlhf.sweep("sft", api.with_overrides(base, {"train.run_steps": 0}), grid,
                          str(tmp_path), progress=False)
    assert again.drop(columns="workdir").equals(full.drop(columns="workdir"))

    # a changed config never reuses these points
    changed = api.with_overrides(base, {"optim.learning_rate": 3e-3})
    with pytest.raises(ValueError, match=r"different config .*optim.learning_rate"):
        jaxrlhf.sweep("sft", changed, grid, str(tmp_path), progress=False)


def test_run_returns_summary_and_metrics(tmp_path):
    result = jaxrlhf.run("sft", jaxrlhf.load_config(SFT, **TINY), str(tmp_path))
    assert result.summary["step"] == 4
    assert list(result.metrics["step"]) == [0, 1, 2, 3, 4]
    assert result.metrics["eval/loss"].notna().sum() == 3  # steps 0, 2 and 4
    with pytest.raises(ValueError, match="single-stage"):
        jaxrlhf.run("sft", jaxrlhf.load_config("configs/pipeline/quickstart.py"), str(tmp_path))


def test_run_once_reuses_a_finished_run_and_refuses_another_config(tmp_path, monkeypatch):
    config = jaxrlhf.load_config(SFT, **TINY)
    first = jaxrlhf.run_once("sft", config, str(tmp_path))
    monkeypatch.setitem(stages.STAGES, "sft", dataclasses.replace(
        stages.STAGES["sft"], train=lambda *a: pytest.fail("ran again")))
    again = jaxrlhf.run_once("sft", config, str(tmp_path))
    assert again.summary == first.summary and again.metrics.equals(first.metrics)
    with pytest.raises(ValueError, match=r"different config .*'seed'"):
        jaxrlhf.run_once("sft", api.with_overrides(config, {"seed": 1}), str(tmp_path))


def test_load_config_passes_its_argument_to_get_config():
    full = jaxrlhf.load_config("configs/experiments/stages.py")
    assert full == jaxrlhf.load_config("configs/experiments/stages.py:full")
    for stage in ("sft", "reward", "ppo"):  # the quickstart stages, without TensorBoard
        quickstart = jaxrlhf.load_config(f"configs/{stage}/quickstart.py",
                                         **{"train.tensorboard": False})
        assert full[stage] == quickstart, stage
    smoke = jaxrlhf.load_config("configs/experiments/stages.py:smoke", **{"ppo.seed": 4})
    assert smoke.ppo.seed == 4 and smoke.ppo.train.steps < full.ppo.train.steps
    assert smoke.sft.model.d_model < full.sft.model.d_model
    with pytest.raises(ValueError, match="size 'huge' is not one of"):
        jaxrlhf.load_config("configs/experiments/stages.py:huge")
