"""Bad config values fail at start-up with the field's name, before any compilation."""
import re
import subprocess
import sys

import pytest

from configs.sft import quickstart
from jaxrlhf import config as config_lib, stages


def _config():
    return quickstart.get_config()


def test_quickstart_config_is_valid():
    stages.validate("sft", _config(), num_devices=8)


@pytest.mark.parametrize("field, value, message", [
    ("optim.learning_rate", -1e-3, "config.optim.learning_rate=-0.001 must be positive"),
    ("model.family", "gpt5", "config.model.family='gpt5' is not a known model family"),
    ("model.n_heads", 3, "config.model.n_heads=3 must divide model.d_model=64"),
    ("train.batch_size", 12, "not divisible by the data-parallel size 8"),
    ("train.grad_accum", 5, "config.train.batch_size=32 must be divisible by train.grad_accum=5"),
    ("data.max_len", 1000, "config.data.max_len=1000 exceeds model.max_seq_len=64"),
])
def test_invalid_values_name_the_field(field, value, message):
    config = _config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        stages.validate("sft", config, num_devices=8)


def test_mesh_that_does_not_tile_the_devices():
    config = _config()
    config.mesh.fsdp = 3
    with pytest.raises(ValueError, match="config.mesh"):
        stages.validate("sft", config, num_devices=8)


def test_config_is_locked_against_new_fields():
    config = _config()
    config.lock()
    with pytest.raises(AttributeError, match="learning_rat"):
        config.optim.learning_rat = 1.0


@pytest.mark.parametrize("stage, override, message", [
    ("sft", "--config.optim.learning_rat=0.1",
     "unknown config field 'optim.learning_rat'; did you mean 'optim.learning_rate'"),
    ("sft", "--config.optim.learning_rate=-1", "config.optim.learning_rate=-1.0 must be positive"),
    ("ppo", "--config.kl_coef=0.1", "unknown config field 'kl_coef'; did you mean 'ppo.kl_coef'"),
    ("pipeline", "--config.sft.train.stepz=3",
     "unknown config field 'sft.train.stepz'; did you mean 'sft.train.steps'"),
])
def test_cli_rejects_bad_overrides_before_compiling(tmp_path, stage, override, message):
    """One line on stderr, no traceback, exit status 1, nothing written."""
    config = "configs/pipeline/quickstart.py" if stage == "pipeline" else f"configs/{stage}/quickstart.py"
    result = subprocess.run(
        [sys.executable, "-m", "jaxrlhf", stage, f"--config={config}", f"--workdir={tmp_path}",
         override], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"jaxrlhf: error: {message}")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("misspell, message", [
    (lambda c: setattr(c, "polciy_init", "runs/sft"),
     "unknown config field 'polciy_init' (set in the config file); did you mean 'policy_init'?"),
    (lambda c: c.train.update(dict(stepz=3)),
     "unknown config field 'train.stepz' (set in the config file); did you mean 'train.steps'?"),
])
def test_a_misspelt_field_in_a_config_file_is_named(misspell, message):
    """A config file builds on an unlocked base_config(), so a misspelling there adds a
    field instead of failing; validation names it rather than ignoring it."""
    config = _config()
    misspell(config)
    with pytest.raises(ValueError, match=re.escape(message)):
        stages.validate("sft", config, num_devices=8)


def test_sample_checks_its_flags_before_loading_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxrlhf", "sample", f"--checkpoint={tmp_path}",
         f"--prompts={tmp_path}/none.txt", "--top_p=2"], capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "jaxrlhf: error: --top_p=2.0 must be in (0, 1]"


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxrlhf", "sft", "--config=configs/sft/quickstart.py",
         f"--workdir={tmp_path}", "--config.data.max_len=0", "--debug"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError: config.data.max_len=0 must be at least 2" in result.stderr


ALIAS_VALUES = {"ppo.learning_rate": 3e-5, "ppo.adam_eps": 1e-6, "ppo.batch_size": 48,
                 "ppo.reward_init": "/runs/old", "reward.source": "pairs.jsonl",
                 "reward.split": "validation", "reward.eval_source": "held_out.jsonl",
                 "reward.eval_split": "dev", "ppo.temperature": 0.9, "ppo.top_k": 5,
                 "ppo.top_p": 0.8, "ppo.prompt_length": 6, "ppo.response_length": 20,
                 "ppo.num_eval_prompts": 64, "ppo.truncate_token_id": 3,
                 "ppo.truncate_min_length": 2, "ppo.penalize_missing_eos": False,
                 "ppo.missing_eos_penalty": -2.0, "ppo.clip": 0.3}


def test_every_alias_is_tested():
    from jaxrlhf.settings import ALIASES
    assert set(ALIAS_VALUES) == set(ALIASES)


@pytest.mark.parametrize("old", sorted(ALIAS_VALUES))
def test_a_deprecated_name_sets_its_new_field_and_prints_one_notice(old, monkeypatch, capsys):
    """Set on the command line's locked config (and twice read), the old name sets the new
    field, over what the config file set there, and one line on stderr names the new
    field."""
    from jaxrlhf import settings as settings_lib
    monkeypatch.setattr(settings_lib, "_NOTIFIED", set())
    targets = settings_lib.alias_targets(old)        # ppo.clip sets clip_low and clip_high
    config = config_lib.load_config_file("configs/ppo/quickstart.py")
    config.lock()
    config_lib.override(config, old, ALIAS_VALUES[old])
    for _ in range(2):
        settings = settings_lib.RunSettings.from_config(config)
        for new in targets:
            assert settings_lib.field_default(new) != ALIAS_VALUES[old]
            value = settings
            for part in new.split("."):
                value = getattr(value, part)
            assert value == ALIAS_VALUES[old]
    notices = capsys.readouterr().err.strip().splitlines()
    names = " and ".join(f"config.{new}" for new in targets)
    assert notices == [f"jaxrlhf: config.{old} is deprecated and will be removed in 0.2: set "
                       f"{names} instead"]


def test_no_field_has_a_default_in_two_places():
    """``base_config()`` is the settings dataclasses' defaults, field for field, and
    config.py writes none of its own (a literal default there would be a second home)."""
    import dataclasses
    import inspect
    from jaxrlhf.settings import ALIASES, RunSettings
    config = config_lib.base_config().to_dict()
    for old in ALIASES:
        section, leaf = old.split(".")
        assert config[section].pop(leaf) is None      # an unset placeholder
    defaults = RunSettings()
    assert set(config) == {f.name for f in dataclasses.fields(RunSettings)}
    for name, value in config.items():
        default = getattr(defaults, name)
        want = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        assert value == (dict(want) if isinstance(want, dict) else want), name
    source = inspect.getsource(config_lib.base_config)
    assert not re.search(r"\bc\.\w+(\.\w+)? = [^c]", source), "a literal default in base_config"


def test_summary_lines():
    from jaxrlhf.cli import summary_line
    line = summary_line("pipeline", {"sft": {"first_eval_loss": 4.2, "eval_loss": 1.6},
                                     "reward": {"eval_accuracy": 0.9},
                                     "ppo": {"gold_before": 0.07, "gold_after": 0.99, "kl": 2.44}},
                        "runs/q")
    assert line == ("pipeline done: SFT held-out loss 4.200 -> 1.600; reward model held-out "
                    "accuracy 0.900; PPO gold 0.070 -> 0.990, KL 2.44 nats. Report: "
                    "runs/q/report.md")
    assert summary_line("sft", {"first_eval_loss": 4.2, "eval_loss": 1.6}, "w") == (
        "sft done: SFT held-out loss 4.200 -> 1.600. Workdir: w")
    assert summary_line("ppo", {"advantage": "grpo", "gold_before": 0.1, "gold_after": 0.9,
                                "kl": 2.0}, "w") == (
        "ppo done: GRPO gold 0.100 -> 0.900, KL 2.00 nats. Workdir: w")
    assert summary_line("dpo", {"loss": "ipo", "eval_accuracy": 0.75, "gold_before": 0.1,
                                "gold_after": 0.5, "kl": 1.0}, "w") == (
        "dpo done: IPO held-out pair accuracy 0.750, gold 0.100 -> 0.500, KL 1.00 nats. "
        "Workdir: w")
    line = summary_line("pipeline", {"bon": {"n": 16, "gold_before": 0.1, "gold_after": 0.6,
                                             "kl": 1.77}, "sft2": {"eval_loss": 1.5}},
                        "w", [("bon", "bon"), ("sft2", "sft")])
    assert line == ("pipeline done: best-of-16 gold 0.100 -> 0.600, KL 1.77 nats; sft2: SFT "
                    "held-out loss n/a -> 1.500. Report: w/report.md")


def test_pipeline_config_names_the_stage():
    config = config_lib.load_config_file("configs/pipeline/quickstart.py")
    stages.validate("pipeline", config, num_devices=8)
    config.ppo.ppo.num_minibatches = 3
    with pytest.raises(ValueError, match=r"config\.ppo\.train\.batch_size=64 must be "
                                         r"divisible by ppo\.num_minibatches=3"):
        stages.validate("pipeline", config, num_devices=8)


def test_a_stage_checks_only_the_batches_it_splits():
    """PPO's minibatch split is PPO's check: an SFT config with a batch PPO could not split
    is valid for SFT, and refused for PPO."""
    config = _config()
    config.train.batch_size, config.ppo.num_minibatches = 30, 4
    stages.validate("sft", config, num_devices=1)
    with pytest.raises(ValueError, match="config.train.batch_size=30 must be divisible by "
                                         "ppo.num_minibatches=4"):
        stages.validate("ppo", config, num_devices=1)


@pytest.mark.parametrize("field, value, message", [
    ("ppo.reward_source", "oracle", "config.ppo.reward_source='oracle' must be one of"),
    ("ppo.kl_estimator", "k4", "config.ppo.kl_estimator='k4' must be one of"),
    ("sampling.top_p", 1.5, r"config.sampling.top_p=1.5 must lie in \(0, 1\]"),
    ("sampling.response_length", 100, "exceeds model.max_seq_len=64"),
])
def test_invalid_ppo_values(field, value, message):
    config = config_lib.load_config_file("configs/ppo/quickstart.py")
    config_lib.override(config, field, value)
    with pytest.raises(ValueError, match=message):
        stages.validate("ppo", config, num_devices=1)


def test_settings_are_typed_frozen_and_hashable():
    import dataclasses
    from jaxrlhf.settings import RunSettings
    settings = RunSettings.from_config(_config())
    assert settings.ppo.updates_per_iteration == settings.ppo.ppo_epochs * settings.ppo.num_minibatches
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ppo.clip_low = 0.3
    hash(settings.ppo)  # jitted code closes over it
    assert settings.model.vocab_size == 0  # resolved from the tokenizer later


def test_pipeline_stage_configs_leave_the_callers_config_alone():
    from jaxrlhf import pipeline
    config = config_lib.load_config_file("configs/pipeline/quickstart.py")
    config.lock()
    stages = pipeline.stage_configs(config, "/runs/x")
    assert stages["ppo"][0].reward_init == "/runs/x/reward"
    assert stages["reward"][0].policy_init == "/runs/x/sft"
    assert config.ppo.reward_init == "" and config.reward.policy_init == ""
    assert stages["sft"][0].policy_init == ""                     # the first stage reads none


def test_a_command_refuses_a_config_of_the_other_kind_and_bad_config_files(tmp_path):
    from jaxrlhf.errors import ConfigError, MissingInputError
    pipeline_config = config_lib.load_config_file("configs/pipeline/quickstart.py")
    with pytest.raises(ConfigError, match="the 'ppo' command needs a single-stage config"):
        stages.check_command("ppo", pipeline_config)
    with pytest.raises(ConfigError, match="the 'pipeline' command needs a pipeline config"):
        stages.check_command("pipeline", _config())
    stages.check_command("pipeline", pipeline_config)
    with pytest.raises(MissingInputError, match="no such config file"):
        config_lib.load_config_file(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        config_lib.load_config_file(str(tmp_path / "empty.py"))
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ConfigError, match="not a Python config file"):
        config_lib.load_config_file(str(tmp_path / "notes.txt"))


def test_frozen_dtype_is_refused_under_lora():
    from jaxrlhf.errors import ConfigError
    from jaxrlhf.settings import RunSettings
    config = config_lib.load_config_file("configs/ppo/quickstart.py")
    config.ppo.frozen_dtype, config.lora.rank = "bfloat16", 4
    with pytest.raises(ConfigError, match="ppo.frozen_dtype='bfloat16' applies to full "
                                          "training only"):
        RunSettings.from_config(config)
