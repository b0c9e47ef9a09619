"""SFT step: sharding invariance, gradient accumulation, exact resume, the CLI end to end."""
import json
import os
import re

import jax
import numpy as np
import pytest

from configs.sft import quickstart
from conftest import metric_rows, run_cli
from jaxrlhf import parallel
from jaxrlhf.data import sft as sft_data
from jaxrlhf.errors import DataError
from jaxrlhf.models.build import resolve_config
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.trainers import sft, supervised

TOKENIZER = get_task("sentiment").tokenizer


def _model_config(config):
    return resolve_config(RunSettings.from_config(config).model, model_init="",
                          vocab_size=len(TOKENIZER))


def _setup(**train):
    config = quickstart.get_config()
    config.model.update(d_model=32, d_ff=64, n_heads=4, n_kv_heads=4)
    config.train.update(batch_size=16, **train)
    examples = get_task(config.data.task).demonstrations(16, seed=0)
    batch = sft_data.tokenize_sft(examples, TOKENIZER, config.data.max_len)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")}
    return config, _model_config(config), batch


def _one_step(config, model_cfg, batch, mesh_axes, devices):
    mesh = parallel.make_mesh(mesh_axes, devices)
    program = supervised.lm_program(RunSettings.from_config(config), model_cfg, mesh)
    state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
    state, metrics = program.step(state, parallel.shard_batch(batch, mesh))
    return float(metrics["loss"]), jax.device_get(jax.tree.leaves(state.params))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sharded_steps_match_one_device(family):
    config, model_cfg, batch = _setup()
    config.model.family = family
    if family == "llama":
        config.model.update(n_kv_heads=2, tie_embeddings=False, qkv_bias=False)
        model_cfg = _model_config(config)
    devices = jax.devices()
    loss_1, params_1 = _one_step(config, model_cfg, batch, {"data": 1}, devices[:1])
    for axes in ({"data": 1, "fsdp": 4, "tensor": 2}, {"data": 8}):
        loss_n, params_n = _one_step(config, model_cfg, batch, axes, devices)
        np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5)
        for a, b in zip(params_n, params_1):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_matches_the_full_batch():
    config, model_cfg, batch = _setup()
    devices = jax.devices()[:1]
    loss_full, params_full = _one_step(config, model_cfg, batch, {"data": 1}, devices)
    config.train.grad_accum = 4
    loss_acc, params_acc = _one_step(config, model_cfg, batch, {"data": 1}, devices)
    np.testing.assert_allclose(loss_acc, loss_full, rtol=1e-5)
    for a, b in zip(params_acc, params_full):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _cli(workdir, *overrides):
    return run_cli("sft", "configs/sft/quickstart.py", workdir, "--config.train.steps=12",
                   "--config.train.log_every=2", "--config.train.eval_every=6",
                   "--config.train.checkpoint_every=4", "--config.data.num_train=256",
                   "--config.data.num_eval=32", "--config.train.batch_size=16", *overrides,
                   timeout=300)


def _final_params(workdir):
    from jaxrlhf.checkpoint import restore_subtree
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    step, params = restore_subtree(os.path.join(workdir, "checkpoints"), "params", one_device)
    return step, jax.device_get(jax.tree.leaves(params))


@pytest.mark.slow   # tests/test_multiprocess.py covers 2 processes (and resume) by default
def test_exact_resume_across_processes(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _cli(straight)
    _cli(split, "--config.train.run_steps=7")          # stops mid-interval, at step 7
    assert _final_params(split)[0] == 7
    resumed = _cli(split)                               # a fresh process resumes
    assert "resuming from step 7" in resumed.stdout
    assert metric_rows(split) == metric_rows(straight)
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(split)
    assert step_a == step_b == 12
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    """Saved from a (fsdp=4, tensor=2) mesh, restored onto (data=8) and onto one device:
    same values, laid out as the new mesh's rules say."""
    from jaxrlhf import checkpoint
    config, model_cfg, batch = _setup()
    save_mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    settings = RunSettings.from_config(config)
    program = supervised.lm_program(settings, model_cfg, save_mesh)
    state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
    state, _ = program.step(state, parallel.shard_batch(batch, save_mesh))
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, state, {"data": {"epoch": 0, "position": 1}})
    ckpt.wait()
    saved = jax.device_get(jax.tree.leaves(state))
    assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(state.params))
    for axes, devices in (({"data": 8}, jax.devices()), ({"data": 1}, jax.devices()[:1])):
        mesh = parallel.make_mesh(axes, devices)
        target_program = supervised.lm_program(settings, model_cfg, mesh)
        target = checkpoint.abstract_like(jax.eval_shape(target_program.init_state),
                                          target_program.state_shardings)
        restored, extras = ckpt.restore(1, target, ("data",))
        assert extras["data"] == {"epoch": 0, "position": 1}
        for leaf in jax.tree.leaves(restored):
            assert leaf.sharding.mesh.shape == mesh.shape
        for a, b in zip(jax.device_get(jax.tree.leaves(restored)), saved):
            np.testing.assert_array_equal(a, b)
        # training goes on from the restored state on the new mesh
        target_program.step(restored, parallel.shard_batch(batch, mesh))
    ckpt.close()


def test_a_file_with_no_response_token_is_an_error_naming_it_and_the_count(tmp_path):
    """Rows whose completions are all empty would train on their EOS alone, to a held-out
    loss of ~0; one empty completion among many is kept and counted (data_counts)."""
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps({"prompt": "", "completion": ""}) + "\n"
                            for _ in range(48)))
    config = quickstart.get_config()
    config.data.source, config.data.num_eval, config.train.batch_size = str(path), 16, 16
    with pytest.raises(DataError, match=re.escape(
            f"{path}: all 32 training rows have an empty completion")):
        sft.prepare_data(RunSettings.from_config(config), str(tmp_path / "run"))
