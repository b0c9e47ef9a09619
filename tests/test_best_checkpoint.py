"""Early stopping by checkpoint selection (``config.train.best_metric``): the loop keeps the
state of the best evaluation in ``WORKDIR/best`` and returns it, across resumes.

The toy run's state is one number w that each step raises by 1, so after step k, w = k and
the held-out "loss" (w - k*)^2 is lowest exactly at step k*: the reference is the argmin,
known in closed form.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxrlhf import checkpoint, parallel, workdir as workdir_lib
from jaxrlhf.data.iterator import BatchIterator
from jaxrlhf.errors import ConfigError
from jaxrlhf.sections import TrainSettings
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import loop


def _step(state, batch):
    del batch
    return {"w": state["w"] + 1.0}, {"loss": state["w"]}


def toy_run(workdir, *, target=3.0, metric="eval/loss", mode="min", steps=6,
            checkpoint_every=2, run_steps=0):
    """The toy loop; returns the final (or best) w."""
    mesh = parallel.make_mesh(RunSettings().mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    init = lambda: {"w": jax.device_put(jnp.float32(0.0), replicated)}   # noqa: E731
    train = TrainSettings(steps=steps, batch_size=8, log_every=1, eval_every=1,
                          checkpoint_every=checkpoint_every, tensorboard=False,
                          run_steps=run_steps, best_metric=metric, best_mode=mode)
    sign = 1.0 if mode == "min" else -1.0

    def evaluate(state):
        w = float(state["w"])
        return {"eval/loss": sign * (w - target) ** 2}

    state = loop.run(workdir=str(workdir), train=train, config=ml_collections.ConfigDict(),
                     mesh=mesh, init_state=init, state_shardings={"w": replicated},
                     step_fn=jax.jit(_step), batches=BatchIterator(
                         {"x": np.zeros((16, 1), np.float32)}, 8, seed=0),
                     evaluate=evaluate, count_tokens=lambda b: 8, desc="toy",
                     abstract_state=jax.eval_shape(init))
    return float(state["w"])


def best_step(workdir):
    return checkpoint.latest_step(os.path.join(workdir, workdir_lib.BEST_DIR))


def test_keeps_the_step_with_the_lowest_held_out_loss(tmp_path):
    assert toy_run(tmp_path, target=3.0) == 3.0    # the loss rises after step 3
    assert best_step(tmp_path) == 3
    assert checkpoint.latest_step(os.path.join(tmp_path, workdir_lib.CHECKPOINT_DIR)) == 6
    assert workdir_lib.model_directory(str(tmp_path)).endswith(workdir_lib.BEST_DIR)


def test_max_mode_keeps_the_highest(tmp_path):
    assert toy_run(tmp_path, target=2.0, mode="max") == 2.0
    assert best_step(tmp_path) == 2


def test_resumed_run_keeps_the_best_from_before_the_interruption(tmp_path):
    assert toy_run(tmp_path, target=1.0, run_steps=4) == 4.0   # stopped early: last state
    assert best_step(tmp_path) == 1
    assert toy_run(tmp_path, target=1.0) == 1.0                # resumed from step 4
    assert best_step(tmp_path) == 1


def test_best_saved_after_the_last_checkpoint_survives_a_crash(tmp_path):
    assert toy_run(tmp_path, target=5.0, checkpoint_every=4) == 5.0
    # A crash after the best (step 5) was saved but before the checkpoint of step 6.
    shutil.rmtree(os.path.join(tmp_path, workdir_lib.CHECKPOINT_DIR, "6"))
    assert toy_run(tmp_path, target=5.0, checkpoint_every=4) == 5.0
    assert best_step(tmp_path) == 5


def test_a_fresh_start_forgets_an_old_best(tmp_path):
    toy_run(tmp_path, target=5.0)
    shutil.rmtree(os.path.join(tmp_path, workdir_lib.CHECKPOINT_DIR))
    assert toy_run(tmp_path, target=2.0) == 2.0
    assert best_step(tmp_path) == 2


def test_off_by_default_returns_the_last_state(tmp_path):
    assert toy_run(tmp_path, metric="") == 6.0
    assert best_step(tmp_path) is None
    assert workdir_lib.model_directory(str(tmp_path)).endswith(workdir_lib.CHECKPOINT_DIR)


def test_unknown_metric_names_what_the_stage_reports(tmp_path):
    with pytest.raises(ConfigError, match=r"best_metric='eval/nope'.*eval/loss"):
        toy_run(tmp_path, metric="eval/nope")


def test_best_mode_is_checked():
    with pytest.raises(ConfigError, match="train.best_mode"):
        TrainSettings(best_mode="lowest")
