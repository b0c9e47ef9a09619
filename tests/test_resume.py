"""Nothing lost, nothing silent: exactly-once logs after a kill, damaged checkpoints, NaN stops.

A run killed at any moment and resumed leaves ``metrics.jsonl`` and ``samples.jsonl``
byte-identical to an uninterrupted run's; a damaged newest checkpoint is reported, set aside
and the newest intact one restored; a diverged run stops naming a checkpoint whose values
are all finite.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jaxrlhf import api, checkpoint, runfiles
from jaxrlhf.errors import CheckpointError, ConfigError, DivergedError

SFT = "configs/sft/quickstart.py"
TINY = {"model.d_model": 32, "model.d_ff": 64, "data.num_train": 64, "data.num_eval": 16,
        "train.batch_size": 16, "train.steps": 8, "train.log_every": 1, "train.eval_every": 2,
        "train.checkpoint_every": 3, "train.num_samples": 2, "train.sample_tokens": 6,
        "train.tensorboard": False}
LOGS = ("metrics.jsonl", "samples.jsonl")

# Runs SFT in a fresh process that SIGKILLs itself at a chosen point:
#   before_save STEP  -- just before checkpoint STEP is written (its log rows are on disk);
#   commit STEP       -- checkpoint STEP's files are all written but not yet committed.
KILLER = """
import json, os, signal, sys
from orbax.checkpoint._src.path import atomicity
from jaxrlhf import api, checkpoint
mode, step, workdir, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if mode == "before_save":
    save = checkpoint.Checkpointer.save
    def killing_save(self, s, *args, **kwargs):
        if s == int(step):
            die()
        return save(self, s, *args, **kwargs)
    checkpoint.Checkpointer.save = killing_save
else:
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def killing_finalize(self):
        if self._final_path.name == step:
            die()
        return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
api.run("sft", api.load_config(sys.argv[5], **overrides), workdir)
"""


def _killed_run(mode, step, workdir):
    result = subprocess.run([sys.executable, "-c", KILLER, mode, str(step), str(workdir),
                             json.dumps(TINY), SFT], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]


def _bytes(workdir, name):
    with open(os.path.join(workdir, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    api.run("sft", api.load_config(SFT, **TINY), str(workdir))
    return workdir


def test_logs_after_kills_and_resumes_are_byte_identical(uninterrupted, tmp_path):
    """Killed before the first checkpoint (its rows stay on disk with no checkpoint behind
    them); re-run and killed again in the middle of writing the second checkpoint, with the
    last log line torn; re-run to the end: the logs equal an uninterrupted run's, byte for
    byte."""
    _killed_run("before_save", 3, tmp_path)
    assert checkpoint.latest_step(str(tmp_path / "checkpoints")) is None
    assert [r["step"] for r in runfiles.StepLog(str(tmp_path / "metrics.jsonl")).rows()] == [
        0, 1, 2, 3]
    _killed_run("commit", 6, tmp_path)
    assert checkpoint.latest_step(str(tmp_path / "checkpoints")) == 3
    assert any(name.startswith("6.") for name in os.listdir(tmp_path / "checkpoints"))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.2')  # what a kill in the middle of a write leaves
    api.run("sft", api.load_config(SFT, **TINY), str(tmp_path))
    for name in LOGS:
        assert _bytes(tmp_path, name) == _bytes(uninterrupted, name), name


def test_resuming_with_another_model_shape_names_each_field_before_restoring(uninterrupted,
                                                                               tmp_path):
    """The run's saved config is compared with the new one first: one error naming each
    field that changes the state's shapes, instead of a restore failing array by array."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    changed = {**TINY, "model.d_model": 64, "model.n_layers": 3}
    with pytest.raises(ConfigError) as error:
        api.run("sft", api.load_config(SFT, **changed), str(workdir))
    message = str(error.value)
    assert "model.d_model: 32 in the run, 64 now" in message
    assert re.search(r"model\.n_layers: \d+ in the run, 3 now", message), message
    assert "new --workdir" in message and "train." not in message
    assert _bytes(workdir, "metrics.jsonl") == _bytes(uninterrupted, "metrics.jsonl")


# --- damaged checkpoints --------------------------------------------------------------

def _state(value):
    return {"w": jnp.full((64, 32), value, jnp.float32), "step": jnp.int32(7)}


def _saved(directory, steps=(1, 2)):
    ckpt = checkpoint.Checkpointer(str(directory), async_save=False)
    for step in steps:
        ckpt.save(step, _state(step), {"data": {"position": step}})
    ckpt.close()


def _truncate_array_file(step_dir):
    """Cut every array data file (``state/**/d/*``) to half its length."""
    for root, _, names in os.walk(step_dir / "state"):
        if os.path.basename(root) == "d":
            for name in names:
                os.truncate(os.path.join(root, name), os.path.getsize(os.path.join(root, name)) // 2)


DAMAGE = {
    "truncated array file": _truncate_array_file,
    "_METADATA deleted": lambda d: os.remove(d / "state" / "_METADATA"),
    "data item missing": lambda d: __import__("shutil").rmtree(d / "data"),
    "empty step directory": lambda d: (__import__("shutil").rmtree(d), d.mkdir()),
}
REASONS = {"truncated array file": "cannot be read", "_METADATA deleted": "_METADATA is missing",
           "data item missing": "data/ item is missing",
           "empty step directory": "step directory is empty"}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, kind):
    directory = tmp_path / "checkpoints"
    _saved(directory)
    DAMAGE[kind](directory / "2")
    said = []
    ckpt = checkpoint.Checkpointer(str(directory))
    target = checkpoint.abstract_like(_state(0))
    step, state, extras = ckpt.restore_newest(target, ("data",), say=said.append)
    assert step == 1 and extras == {"data": {"position": 1}}
    np.testing.assert_array_equal(np.asarray(state["w"]), 1.0)
    assert len(said) == 1 and "step 2" in said[0] and REASONS[kind] in said[0], said
    assert (tmp_path / "checkpoints.damaged" / "2").is_dir()  # set aside, never deleted
    ckpt.save(2, _state(5), {"data": {"position": 5}})       # the run goes on from step 1
    ckpt.close()
    assert checkpoint.latest_step(str(directory)) == 2


def test_no_intact_checkpoint_is_one_clear_error_and_moves_nothing(tmp_path):
    directory = tmp_path / "checkpoints"
    _saved(directory)
    os.remove(directory / "1" / "state" / "_METADATA")
    __import__("shutil").rmtree(directory / "2" / "data")
    ckpt = checkpoint.Checkpointer(str(directory))
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step 2: its data/ item "
                                              r"is missing; step 1: state/_METADATA is missing"):
        ckpt.restore_newest(checkpoint.abstract_like(_state(0)), ("data",))
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_reading_a_damaged_finished_run_names_the_checkpoint(tmp_path):
    _saved(tmp_path)
    _truncate_array_file(tmp_path / "2")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(CheckpointError, match="step 2 .* is damaged: it cannot be read"):
        checkpoint.restore_subtree(str(tmp_path), "w", sharding)


def test_step_log_drops_a_torn_last_line_and_names_a_damaged_one(tmp_path, capsys):
    log = runfiles.StepLog(str(tmp_path / "m.jsonl"))
    log.append([{"step": 0, "x": 1.5}, {"step": 1, "x": 2.0}, {"step": 2, "x": 0.1}])
    with open(log.path, "a") as f:
        f.write('{"step": 3, "x"')
    assert [r["step"] for r in log.rows()] == [0, 1, 2]
    log.keep_through(1)
    assert _bytes(tmp_path, "m.jsonl") == b'{"step": 0, "x": 1.5}\n{"step": 1, "x": 2.0}\n'
    assert capsys.readouterr().out == (f"{log.path}: dropped its half-written last line "
                                       "(15 bytes: '{\"step\": 3, \"x\"')\n")
    log.keep_through(1)                                    # nothing torn: nothing said
    assert capsys.readouterr().out == ""
    with open(log.path, "a") as f:
        f.write('{"step": 2, \n{"step": 3}\n')
    with pytest.raises(CheckpointError, match=r"m\.jsonl:3: damaged log line"):
        log.rows()


# --- NaN stops ------------------------------------------------------------------------

def _last_good(message):
    found = re.search(r"last good checkpoint is step (\d+) in (\S+) ", message)
    return (int(found.group(1)), found.group(2)) if found else (None, None)


@pytest.mark.parametrize("seen_in", ["state", "eval"])
def test_divergence_stops_naming_a_finite_checkpoint(tmp_path, seen_in):
    """lr 1e30 (after a warm-up step at lr 0): found in the state about to be checkpointed
    before any metric is logged, or in a held-out evaluation."""
    cadence = {"train.log_every": 100, "train.checkpoint_every": 1,
               "train.eval_every": 100 if seen_in == "state" else 1}
    config = api.load_config(SFT, **{**TINY, **cadence, "optim.learning_rate": 1e30,
                                     "train.num_samples": 0, "train.steps": 20})
    with pytest.raises(DivergedError) as stop:
        api.run("sft", config, str(tmp_path))
    step, directory = _last_good(str(stop.value))
    assert step is not None and step >= 1, str(stop.value)
    assert ("train state" if seen_in == "state" else "eval/loss=nan") in str(stop.value)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored_step, params = checkpoint.restore_subtree(directory, "params", sharding)
    assert restored_step == step
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert not os.path.exists(tmp_path / "summary.json")  # not a success


def test_saving_a_non_finite_state_writes_nothing(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, _state(1), {"data": {}})
    with pytest.raises(DivergedError, match=r"step 2: the train state holds NaN .* last good "
                                            r"checkpoint is step 1"):
        ckpt.save(2, _state(float("nan")), {"data": {}})
    ckpt.close()
    assert checkpoint.latest_step(str(tmp_path)) == 1
