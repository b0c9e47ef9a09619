"""``--dry_run`` compiles each stage's step and reports XLA's per-device memory without
running it or writing a run."""
import os

import jax
import pytest

from conftest import REPO, run_cli
from jaxrlhf import dry_run
from jaxrlhf.config import load_config_file

PIPELINE = os.path.join(REPO, "configs", "pipeline", "quickstart.py")


@pytest.fixture(scope="module")
def pipeline_report():
    return dry_run.report("pipeline", load_config_file(PIPELINE))


def test_every_stage_reports_its_step(pipeline_report):
    assert {stage: list(r["programs"]) for stage, r in pipeline_report.items()} == {
        "sft": ["step"], "reward": ["step"], "ppo": ["iteration"]}
    for stage, r in pipeline_report.items():
        assert r["devices"] == jax.device_count() and r["mesh"]["data"] == 8
        for m in r["programs"].values():
            assert m["peak_bytes"] == (m["argument_bytes"] + m["output_bytes"]
                                       - m["alias_bytes"] + m["temp_bytes"] + m["code_bytes"])
            assert m["alias_bytes"] > 0          # the state is donated
            assert m["parameters"] > 0 and m["peak_gib"] == m["peak_bytes"] / 2 ** 30


def test_memory_follows_the_batch(pipeline_report):
    """Four times the SFT batch needs more scratch memory (the activations grow) while the
    arguments (mostly the replicated state) stay put."""
    config = load_config_file(PIPELINE)["sft"]
    config.train.batch_size *= 4
    big = dry_run.report("sft", config)["sft"]["programs"]["step"]
    small = pipeline_report["sft"]["programs"]["step"]
    assert big["temp_bytes"] > 2 * small["temp_bytes"]
    assert big["argument_bytes"] - small["argument_bytes"] < 0.5 * small["argument_bytes"]


def test_cli_dry_run_prints_memory_and_writes_nothing(tmp_path):
    result = run_cli("sft", "configs/sft/quickstart.py", tmp_path / "run", "--dry_run")
    assert "sft step: peak" in result.stdout and "per device" in result.stdout
    assert not (tmp_path / "run").exists()
