"""Model package tests: config, KV cache parity, logical partition specs, bf16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.hf_config import hf_dict_from_model_config, model_config_from_hf
from jaxrlhf.models.transformer import CausalLM, ScalarModel, init_cache

ALLOWED = {"embed", "mlp", "heads", "kv", "vocab", "layers", None}


def _partition_specs(model):
    """The logical axis names of every parameter, as PartitionSpecs."""
    return nnx.get_partition_spec(nnx.state(model, nnx.Param))


def _batch():
    ids = jnp.array([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]], jnp.int32)
    mask = (jnp.arange(6) >= jnp.array([[2], [0]])).astype(jnp.int32)
    return ids, jnp.cumsum(mask, 1) - mask, mask


def _torch_logits(torch_model, ids, pos, mask):
    """transformers' PyTorch logits for the same left-padded batch and position ids."""
    import torch
    with torch.no_grad():
        return torch_model(input_ids=torch.tensor(ids.tolist()),
                           attention_mask=torch.tensor(mask.tolist()),
                           position_ids=torch.tensor(pos.tolist())).logits.numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_config_hf_roundtrip(family):
    c = ModelConfig.preset(family)
    assert model_config_from_hf(hf_dict_from_model_config(c)) == c


def test_config_error_names_field():
    with pytest.raises(ValueError, match="model.n_heads=6"):
        ModelConfig.preset("gpt2", n_heads=6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kv_cache_matches_full_forward(family):
    c = ModelConfig.preset(family)
    m = CausalLM(c, rngs=nnx.Rngs(0))
    ids, pos, mask = _batch()
    full, _ = m(ids, pos, mask)
    cache = init_cache(c, 2, 6)
    out, cache = m(ids[:, :3], pos[:, :3], mask, cache)
    outs = [out]
    for t in range(3, 6):
        out, cache = m(ids[:, t:t + 1], pos[:, t:t + 1], mask, cache)
        outs.append(out)
    inc = jnp.concatenate(outs, 1)
    assert float(jnp.max(jnp.abs((inc - full) * mask[..., None]))) < 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_partition_specs(family):
    for m in (CausalLM(ModelConfig.preset(family), rngs=nnx.Rngs(0)),
              ScalarModel(ModelConfig.preset(family), rngs=nnx.Rngs(0))):
        specs = jax.tree.leaves(_partition_specs(m), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        params = jax.tree.leaves(nnx.state(m, nnx.Param))
        assert len(specs) == len(params)
        for s in specs:
            assert isinstance(s, jax.sharding.PartitionSpec) and set(s) <= ALLOWED


def test_bf16_compute_fp32_params():
    ids, pos, mask = _batch()
    a, _ = CausalLM(ModelConfig.preset("llama"), rngs=nnx.Rngs(0))(ids, pos, mask)
    b, _ = CausalLM(ModelConfig.preset("llama", dtype="bfloat16"), rngs=nnx.Rngs(0))(ids, pos, mask)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.1


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_torch_parity(family, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers
    from jaxrlhf.models.hf import load_causal_lm
    cfg = ModelConfig.preset(family)
    hfc = transformers.AutoConfig.for_model(**hf_dict_from_model_config(cfg))
    torch.manual_seed(0)
    tm = transformers.AutoModelForCausalLM.from_config(hfc).eval()
    tm.save_pretrained(tmp_path)
    m = load_causal_lm(str(tmp_path))
    ids, pos, mask = _batch()
    ref = _torch_logits(tm, ids, pos, mask)
    out, _ = m(ids, pos, mask)
    assert float(jnp.max(jnp.abs((out - ref) * mask[..., None]))) < 1e-4


def test_hub_id_fails_fast():
    from jaxrlhf.models.hf import load_causal_lm
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub id"):
        load_causal_lm("gpt2-not-a-dir")


def _decode(m, c, ids, pos, mask):
    """Prefill 3 tokens, then decode the rest one by one; the concatenated logits."""
    cache = init_cache(c, ids.shape[0], ids.shape[1])
    out, cache = m(ids[:, :3], pos[:, :3], mask, cache)
    outs = [out]
    for t in range(3, ids.shape[1]):
        out, cache = m(ids[:, t:t + 1], pos[:, t:t + 1], mask, cache)
        outs.append(out)
    return jnp.concatenate(outs, 1), cache


def _params(m):
    return {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scan_layers_matches_unscanned(family, tmp_path):
    from jaxrlhf.models.hf import causal_lm_to_hf, load_causal_lm, save_causal_lm
    c = ModelConfig.preset(family, n_layers=3)
    save_causal_lm(CausalLM(c, rngs=nnx.Rngs(1)), str(tmp_path))
    loop = load_causal_lm(str(tmp_path))
    scan = load_causal_lm(str(tmp_path), scan_layers=True)
    # stacked layout: one Block whose params have a leading 'layers' axis
    assert scan.model.blocks.q.kernel.get_value().shape == (3, c.d_model, c.d_model)
    for k, spec in nnx.to_flat_state(_partition_specs(scan)):
        if k[:2] == ("model", "blocks"):
            assert spec.get_value()[0] == "layers", k
    ids, pos, mask = _batch()
    a, _ = loop(ids, pos, mask)
    b, _ = scan(ids, pos, mask)
    assert float(jnp.max(jnp.abs(a - b))) < 1e-5
    da, ca = _decode(loop, c, ids, pos, mask)
    db, cb = _decode(scan, c, ids, pos, mask)
    assert float(jnp.max(jnp.abs((da - db) * mask[..., None]))) < 1e-5
    assert float(jnp.max(jnp.abs(ca.k - cb.k))) < 1e-5 and int(cb.index) == 6
    assert float(jnp.max(jnp.abs((db - a) * mask[..., None]))) < 1e-4
    # under jit, and exported back to the same HF tensors
    j, _ = nnx.jit(lambda m, *x: m(*x))(scan, ids, pos, mask)
    assert float(jnp.max(jnp.abs(j - a))) < 1e-5
    ha, hb = causal_lm_to_hf(loop), causal_lm_to_hf(scan)
    assert ha.keys() == hb.keys() and all((ha[k] == hb[k]).all() for k in ha)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_save_roundtrip_and_transformers_parity(family, tmp_path):
    pytest.importorskip("torch")
    import transformers
    from safetensors.numpy import load_file
    from jaxrlhf.models.hf import load_causal_lm, save_causal_lm
    c = ModelConfig.preset(family)
    m = CausalLM(c, rngs=nnx.Rngs(2))
    save_causal_lm(m, str(tmp_path / "a"))
    back = load_causal_lm(str(tmp_path / "a"))
    pa, pb = _params(m), _params(back)
    assert pa.keys() == pb.keys() and all(bool((pa[k] == pb[k]).all()) for k in pa)
    names = load_file(str(tmp_path / "a" / "model.safetensors")).keys()
    assert ("lm_head.weight" in names) == (not c.tie_embeddings)
    # scanned model saves the same checkpoint
    save_causal_lm(load_causal_lm(str(tmp_path / "a"), scan_layers=True), str(tmp_path / "b"))
    ta, tb = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).eval()
    assert type(tm).__name__ == hf_dict_from_model_config(c)["architectures"][0]
    ids, pos, mask = _batch()
    ref = _torch_logits(tm, ids, pos, mask)
    out, _ = m(ids, pos, mask)
    assert float(jnp.max(jnp.abs((out - ref) * mask[..., None]))) < 1e-4


@pytest.mark.parametrize("scan", [False, True])
def test_remat_full_matches_none(scan):
    """remat='full' recomputes the blocks in the backward pass: same logits and gradients as
    remat='none' (up to XLA fusion rounding, ~1e-7), and the remat really is in the program."""
    ids, pos, mask = _batch()

    def run(remat):
        m = CausalLM(ModelConfig.preset("llama", scan_layers=scan, remat=remat), rngs=nnx.Rngs(0))
        gd, params = nnx.split(m)

        def f(params):
            def loss(p):
                logits, _ = nnx.merge(gd, p)(ids, pos, mask)
                return jnp.mean(jax.nn.logsumexp(logits, -1) * mask), logits
            return jax.value_and_grad(loss, has_aux=True)(params)
        (_, logits), g = jax.jit(f)(params)
        return logits, g, str(jax.make_jaxpr(f)(params))

    la, ga, ja = run("none")
    lb, gb, jb = run("full")
    assert "remat" not in ja and "remat" in jb
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-6, atol=1e-6)
    flat_a, flat_b = nnx.to_flat_state(ga), nnx.to_flat_state(gb)
    assert len(flat_a) == len(flat_b) > 0
    for (ka, va), (kb, vb) in zip(flat_a, flat_b):
        assert ka == kb
        np.testing.assert_allclose(np.asarray(va.get_value()), np.asarray(vb.get_value()), rtol=1e-5, atol=1e-7,
                                   err_msg=str(ka))


def test_load_rejects_unplaced_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file
    from jaxrlhf.models.hf import load_causal_lm, save_causal_lm
    save_causal_lm(CausalLM(ModelConfig.preset("llama"), rngs=nnx.Rngs(0)), str(tmp_path))
    f = str(tmp_path / "model.safetensors")
    w = load_file(f)
    w["model.layers.0.self_attn.o_proj.bias"] = np.ones(64, np.float32)
    save_file(w, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="o_proj.bias"):
        load_causal_lm(str(tmp_path))
