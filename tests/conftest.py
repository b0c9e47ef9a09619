"""Shared test set-up and helpers.

Every test sees 8 emulated CPU devices, so sharded and single-device runs can be compared.
Helpers used by several test files live here (``from conftest import run_cli``).
"""
import json
import os
import subprocess
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAXRLHF_NO_PROGRESS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(command, *args, timeout=600, check=True):
    """``python -m jaxrlhf COMMAND ARGS`` in a fresh process on one device, as a user runs it.

    ``command`` is a stage (``sft``, ``reward``, ``ppo``, ``pipeline``) or ``sample``; for a
    stage, ``args`` are ``config, workdir, *overrides`` and TensorBoard is switched off.
    """
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("XLA_FLAGS", None)
    if command in ("sft", "reward", "ppo", "pipeline"):
        config, workdir, *overrides = args
        args = [f"--config={config}", f"--workdir={workdir}", *overrides]
        if command != "pipeline":
            args.append("--config.train.tensorboard=False")
    result = subprocess.run([sys.executable, "-m", "jaxrlhf", command, *map(str, args)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def metric_rows(workdir):
    """The rows of ``workdir/metrics.jsonl`` without the timing-dependent ``perf/*`` fields."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def read_summary(workdir):
    """``workdir/summary.json`` without its wall-clock time."""
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    summary.pop("wall_seconds", None)
    return summary


FIXTURES = os.path.join(REPO, "tests", "fixtures")


def full_dataset(relative):
    """A ``pytest.mark.skipif`` for tests that need a full dataset under the data dir."""
    import pytest
    from jaxrlhf.data import paths
    try:
        present = (paths.data_dir() / relative).exists()
    except FileNotFoundError:
        present = False
    return pytest.mark.skipif(not present, reason=(
        f"needs the full dataset {relative}: set ${paths.ENV_VAR} to a directory holding it "
        "(see tests/fixtures/README.md)"))
