"""HF weights are read onto their shards (8 emulated devices, an fsdp x tensor mesh), never
as constants of a compiled init program, and without a full host copy of the model."""
import tracemalloc

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf import parallel
from jaxrlhf.config import base_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.hf import load_params, save_causal_lm
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings

MESH = {"data": 1, "fsdp": 4, "tensor": 2}


def _checkpoint(path, family, **overrides):
    """A saved random model of ``family`` and its parameters {path: numpy array}."""
    cfg = ModelConfig.preset(family, **overrides)
    model = CausalLM(cfg, rngs=nnx.Rngs(3))
    save_causal_lm(model, str(path))
    return cfg, {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def _shardings(cfg, mesh):
    abstract = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))[1]
    return parallel.state_shardings(abstract, mesh, dict(parallel.rules_table(
        base_config().axis_rules)))


def _stacked(reference, cfg):
    """The reference parameters in the scanned layout ([L, ...] per block parameter)."""
    out = {k: v for k, v in reference.items() if k[1] != "blocks"}
    for key in {k[3:] for k in reference if k[1] == "blocks"}:
        out[("model", "blocks", *key)] = np.stack(
            [reference[("model", "blocks", i, *key)] for i in range(cfg.n_layers)])
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan", [False, True])
def test_each_shard_holds_its_slice_of_the_checkpoint(family, scan, tmp_path):
    cfg, reference = _checkpoint(tmp_path, family, n_layers=3)
    cfg = cfg.replace(scan_layers=scan)
    if scan:
        reference = _stacked(reference, cfg)
    mesh = parallel.make_mesh(MESH)
    shardings = _shardings(cfg, mesh)
    params = dict(nnx.to_flat_state(load_params(str(tmp_path), cfg, shardings)))
    assert params.keys() == reference.keys()
    split = 0
    for key, variable in params.items():
        array = variable.get_value()
        assert array.sharding == dict(nnx.to_flat_state(shardings))[key].get_value(), key
        split += not array.sharding.is_fully_replicated
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), reference[key][shard.index],
                                          err_msg=str(key))
    assert split >= len(params) // 2    # most parameters are split over the mesh, not copied


def _sft_program(model_init, cfg, mesh):
    from jaxrlhf.trainers import supervised
    c = base_config()
    c.model_init = model_init
    c.mesh.update(MESH)
    c.model.update(family=cfg.family, max_seq_len=cfg.max_seq_len)
    return supervised.lm_program(RunSettings.from_config(c), cfg, mesh)


def test_init_program_does_not_grow_with_the_weights(tmp_path):
    """The SFT stage's initial state from a HF directory equals the checkpoint, and the
    compiled program that builds it takes the weights as arguments: its size is the same for
    a checkpoint 16x larger (weights baked in as constants would add their bytes)."""
    mesh = parallel.make_mesh(MESH)
    sizes, weight_bytes = [], []
    for width in (64, 256):
        path = tmp_path / str(width)
        cfg, reference = _checkpoint(path, "llama", d_model=width, d_ff=4 * width,
                                     vocab_size=4 * width)
        program = _sft_program(str(path), cfg, mesh)
        state = program.init_state()
        for key, variable in nnx.to_flat_state(state.params):
            np.testing.assert_array_equal(np.asarray(variable.get_value()), reference[key])
        lowered = program.start.lower(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                         state.params))
        sizes.append(len(lowered.compile().as_text()))
        weight_bytes.append(sum(v.nbytes for v in reference.values()))
    assert weight_bytes[1] > 10 * weight_bytes[0] > 1_000_000
    assert abs(sizes[1] - sizes[0]) < 0.05 * sizes[0], sizes
    assert sizes[1] < weight_bytes[1] / 10


def test_loading_holds_less_than_one_host_copy(tmp_path):
    """Host memory allocated while loading peaks well below the model's size: the tensors are
    read one device slice at a time, never as a dict of whole arrays."""
    cfg, reference = _checkpoint(tmp_path, "llama", d_model=128, d_ff=512, n_layers=4,
                                 vocab_size=512)
    total = sum(v.nbytes for v in reference.values())
    mesh = parallel.make_mesh(MESH)
    shardings = _shardings(cfg, mesh)
    tracemalloc.start()
    params = load_params(str(tmp_path), cfg, shardings)
    jax.block_until_ready(params)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.5 * total, (peak, total)


def test_reward_model_trunk_loads_from_a_hf_directory(tmp_path):
    """A reward model started from ``model_init`` takes the checkpoint's trunk (its LM head
    is not a reward model's and is left out) and a fresh scalar head."""
    from jaxrlhf.trainers.reward import initial_params_fn
    from jaxrlhf.models.transformer import ScalarModel
    cfg, reference = _checkpoint(tmp_path, "llama")
    mesh = parallel.make_mesh(MESH)
    abstract = nnx.split(nnx.eval_shape(lambda: ScalarModel(cfg, rngs=nnx.Rngs(0))))[1]
    shardings = parallel.state_shardings(abstract, mesh, dict(parallel.rules_table(
        base_config().axis_rules)))
    params = initial_params_fn(0, cfg, None, str(tmp_path))(shardings)
    flat = dict(nnx.to_flat_state(params))
    assert {k for k in flat if k[0] == "model"} == {k for k in reference if k[0] == "model"}
    for key, variable in flat.items():
        if key[0] == "model":
            np.testing.assert_array_equal(np.asarray(variable.get_value()), reference[key])
    assert flat[("head", "kernel")].get_value().shape == (cfg.d_model, 1)
