"""Shared test set-up and helpers.

Every test sees 8 emulated CPU devices, so sharded and single-device runs can be compared.
Helpers used by several test files live here (``from conftest import run_cli``).
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAXRLHF_NO_PROGRESS", "1")
# One XLA compilation cache for the session, inherited by every command-line run, notebook
# kernel and experiment runner it starts: they compile the same programs again and again,
# and a cache hit loads the same executable instead of compiling it (about half of a short
# run's time). A fresh directory each session, removed at its end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jaxrlhf-tests-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(command, *args, timeout=600, check=True):
    """``python -m jaxrlhf COMMAND ARGS`` in a fresh process on one device, as a user runs it.

    ``command`` is a stage with steps (``pretrain``, ``sft``, ``reward``, ``ppo``, ``dpo``),
    ``pipeline``, or ``sample``, ``bon``, ``export``; for a stage, ``args`` are ``config,
    workdir, *overrides`` and TensorBoard is switched off.
    """
    from jaxrlhf.stages import STAGES
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("XLA_FLAGS", None)
    if command == "pipeline" or (command in STAGES and STAGES[command].has_steps):
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


@pytest.fixture(scope="session")
def sft_workdir(tmp_path_factory):
    """A short SFT quickstart run that later stages start from (shared by the session)."""
    workdir = tmp_path_factory.mktemp("sft")
    run_cli("sft", "configs/sft/quickstart.py", workdir, "--config.train.steps=200",
            "--config.train.eval_every=100", "--config.train.checkpoint_every=100")
    return str(workdir)


@pytest.fixture(scope="session")
def reward_workdir(sft_workdir, tmp_path_factory):
    """A short reward-model quickstart run on pairs sampled from ``sft_workdir``."""
    workdir = tmp_path_factory.mktemp("reward")
    run_cli("reward", "configs/reward/quickstart.py", workdir,
            f"--config.policy_init={sft_workdir}", "--config.train.steps=150",
            "--config.train.eval_every=150", "--config.train.checkpoint_every=150")
    return str(workdir)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """One directory for every SMOKE-sized notebook and experiment run of the session, so
    they share the smoke SFT policy (``jaxrlhf.run_once``)."""
    return tmp_path_factory.mktemp("smoke")



# The longest files first: with ``-n 2`` (pytest-xdist) the two workers then share the
# short tests at the end and finish together, instead of one waiting on a long run.
LONG_FIRST = ("test_pipeline.py", "test_multiprocess.py", "test_notebooks.py",
              "test_experiments.py", "test_algorithms.py", "test_lora.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: (LONG_FIRST.index(item.path.name)
                                 if item.path.name in LONG_FIRST else len(LONG_FIRST)))


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


def assert_same_numbers(got, want, rel=1e-6, path="measured"):
    """``got`` has ``want``'s structure, strings and booleans, and its numbers to ``rel``:
    least-squares fits recomputed on another CPU or BLAS differ in their last digits."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            assert_same_numbers(got[key], want[key], rel, f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, rel, f"{path}[{i}]")
    elif isinstance(want, float) or (isinstance(got, float) and not isinstance(want, bool)):
        assert got == pytest.approx(want, rel=rel, abs=1e-12), path
    else:
        assert got == want, path
