"""The stage table is the one home of a stage: the command line, the pipeline's wiring,
the Python API and the dry run are lookups in it (docs/design.md, "Extending it")."""
import dataclasses
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO
from jaxrlhf import api, cli, config as config_lib, dry_run, pipeline, stages
from jaxrlhf.trainers.stage import PRODUCTS, Stage

NAMES = sorted(stages.STAGES)
# tests/test_dry_run.py compiles the default pipeline's stages at quickstart size.
DRY_RUN_ELSEWHERE = set(stages.DEFAULT_PIPELINE)


def test_every_stage_is_a_command_an_api_entry_and_its_modules_record():
    for name, stage in stages.STAGES.items():
        assert stage.name == name and name in cli.COMMANDS and name in api.COMMANDS
        module = sys.modules[stage.train.__module__]
        assert module.STAGE is stage                   # one record, exported by its module
        assert stage.produces in (None, *PRODUCTS) and set(stage.reads) <= set(PRODUCTS)


@pytest.mark.parametrize("name", sorted(set(NAMES) - DRY_RUN_ELSEWHERE))
def test_every_stage_dry_runs_its_programs(name):
    """Each stage compiles its programs from abstract weights and batches (the base config
    on the emulated devices, PPO's batches split as PPO splits them)."""
    config = config_lib.base_config()
    config.train.batch_size, config.ppo.num_minibatches, config.bon.batch_size = 32, 4, 32
    report = dry_run.report(name, config)[name]
    assert report["programs"] and all(m["peak_bytes"] > 0 and m["parameters"] > 0
                                      for m in report["programs"].values())


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_has_a_one_line_headline(name):
    summary = {"gold_before": 0.1, "gold_after": 0.5, "kl": 2.0, "eval_loss": 1.0,
               "first_eval_loss": 2.0, "eval_accuracy": 0.9, "n": 4,
               "eval_bits_per_byte": 1.5}
    for given in (summary, {}):
        line = stages.get(name).headline(given)
        assert line and "\n" not in line


def test_help_lists_every_command_from_the_table():
    result = subprocess.run([sys.executable, "-m", "jaxrlhf", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name, stage in stages.STAGES.items():
        assert any(line.split() and line.split()[0] == name and stage.help in line
                   for line in lines), name
    for command in ("pipeline", "sample", "export"):
        assert any(line.split()[:1] == [command] for line in lines), command


def test_every_command_has_a_help_page_with_its_flags_and_a_runnable_example():
    for command in cli.COMMANDS:
        page = cli.command_help(command)
        assert page.startswith(f"jaxrlhf {command}: {cli.command_line(command)}"), command
        for flag in (*cli.COMMAND_FLAGS.get(command, cli.STAGE_FLAGS), "debug"):
            assert f"--{flag} " in page, (command, flag)
        example = cli.command_example(command)
        assert example.startswith(f"python -m jaxrlhf {command} ") and example in page
        for arg in example.split():
            if arg.startswith("--config="):   # the example's config file is in the repository
                assert (pathlib.Path(REPO) / arg.split("=", 1)[1]).is_file(), example


def test_a_command_help_exits_0_and_an_unknown_command_is_one_line_naming_the_closest():
    run = lambda *args: subprocess.run([sys.executable, "-m", "jaxrlhf", *args],  # noqa: E731
                                       cwd=REPO, capture_output=True, text=True, timeout=120)
    page = run("bon", "--help")
    assert page.returncode == 0 and page.stdout.startswith("jaxrlhf bon: "), page
    wrong = run("sfft", "--config=configs/sft/quickstart.py")
    assert wrong.returncode == 1 and wrong.stdout == "", wrong
    assert wrong.stderr.strip().splitlines() == [
        "jaxrlhf: error: " + cli.unknown_command_message("sfft")]
    assert "did you mean 'sft'?" in wrong.stderr and ", ".join(cli.COMMANDS) in wrong.stderr
    stray = run("sft", "extra", "--config=configs/sft/quickstart.py")
    assert stray.returncode == 1 and stray.stderr.startswith(
        "jaxrlhf: error: one command and its flags, got 'sft extra'"), stray
    assert "Traceback" not in stray.stderr
    no_workdir = run("sft", "--config=configs/sft/quickstart.py")
    assert no_workdir.returncode == 1 and no_workdir.stderr.strip() == (
        "jaxrlhf: error: --config and --workdir are required"), no_workdir


def _fake_stage(calls: list) -> Stage:
    def train(config, workdir):
        calls.append((config.policy_init, workdir))
        return {"note": "ran"}
    return Stage(name="distill", help="a stage added by one line in the table",
                 sections=(), train=train, produces=None, reads=("policy",), has_steps=False,
                 headline=lambda s: f"distilled: {s.get('note')}",
                 dry_run=lambda settings, mesh: {})


def test_a_stage_added_to_the_table_is_a_command_wired_into_pipelines(monkeypatch, tmp_path):
    """One record in the table: it is listed by --help, runs through the API, is wired to
    the policy of an earlier stage in a pipeline, and counts as finished by its summary."""
    calls = []
    monkeypatch.setitem(stages.STAGES, "distill", _fake_stage(calls))
    assert "distill" in cli.help_text() and "a stage added by one line" in cli.help_text()
    config = config_lib.load_config_file("configs/pipeline/quickstart.py")
    config.stages = (("sft", "sft"), ("distill", "distill"))
    config.distill = config_lib.base_config()
    wired = pipeline.stage_configs(config, str(tmp_path))
    assert wired["distill"][0].policy_init == str(tmp_path / "sft")
    assert pipeline.run("distill", config.distill, str(tmp_path / "d")) == {"note": "ran"}
    assert calls == [("", str(tmp_path / "d"))]
    assert not api.finished("distill", config.distill, str(tmp_path / "d"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "summary.json").write_text("{}")
    assert api.finished("distill", config.distill, str(tmp_path / "d"))
    assert cli.summary_line("distill", {"note": "x"}, "w") == "distill done: distilled: x. Workdir: w"


def test_an_unknown_stage_names_the_closest():
    with pytest.raises(ValueError, match="unknown stage 'sfft'; did you mean 'sft'"):
        stages.get("sfft")


def test_a_record_with_an_unknown_product_is_refused():
    with pytest.raises(ValueError, match="not products"):
        dataclasses.replace(_fake_stage([]), reads=("value_model",))


def test_a_stage_may_name_the_stage_it_reads_from():
    """``policy_init="@sft"`` wires the SFT stage's workdir even after a later policy
    (PPO); a reference to a stage that is not earlier, or produces another kind, is refused
    before anything runs."""
    c = config_lib.load_config_file(f"{REPO}/configs/pipeline/imdb_research.py")
    wired = pipeline.stage_configs(c, "/W")
    assert wired["ppo_gold"][0].policy_init == "/W/sft"      # not /W/ppo, the latest policy
    assert wired["ppo"][0].policy_init == "/W/sft"
    assert wired["bon"][0].reward_init == "/W/reward"
    for field, ref, why in (("policy_init", "@bon", "produces a policy"),
                            ("policy_init", "@dpo", "earlier stage"),
                            ("reward_init", "@sft", "produces a reward_model")):
        bad = config_lib.load_config_file(f"{REPO}/configs/pipeline/imdb_research.py")
        bad.ppo[field] = ref
        with pytest.raises(config_lib.ConfigError, match=f"config.ppo.{field}='{ref}'.*{why}"):
            stages.validate("pipeline", bad, 1)
