"""HF config.json import: every field is read, checked or known not to matter; the rest is
refused by name; RoPE scaling ('linear', 'llama3') matches transformers beyond the original
context (docs/design.md, "A new model family")."""
import json

import numpy as np
import pytest

from jaxrlhf.models import hf_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.hf_config import (GENERIC_NO_EFFECT, NO_EFFECT, READ, REQUIRED,
                                      hf_dict_from_model_config, model_config_from_hf)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG_CLASSES = {"gpt2": "GPT2Config", "llama": "LlamaConfig", "qwen2": "Qwen2Config"}
# Generic fields that a checkpoint could set and that must not change the logits.
GENERIC_PERTURBED = ("chunk_size_feed_forward", "initializer_range", "use_cache")
OTHER_VALUES = {"summary_activation": "tanh", "summary_type": "last", "n_ctx": 7,
                "sliding_window": 4}


def _tiny(family, **changes):
    """A tiny HF config dict of ``family`` (our preset's), with ``changes``."""
    d = hf_dict_from_model_config(ModelConfig.preset(family, vocab_size=64, max_seq_len=256))
    d.update(changes)
    return d


def _hf_logits(d, state_dict=None, positions=None):
    """transformers' logits of a fixed batch for config dict ``d`` (weights: ``state_dict``,
    else seed 0), and the model's state dict."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**d), attn_implementation="eager").eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    ids = torch.tensor(np.random.default_rng(0).integers(0, 64, size=(2, 12)))
    kwargs = {} if positions is None else {"position_ids": torch.tensor(positions)}
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits.numpy(), model.state_dict()


@pytest.mark.parametrize("family", sorted(CONFIG_CLASSES))
def test_every_transformers_field_is_classified(family):
    """Each field of transformers' own config class (and of a saved config.json) is read,
    checked or known not to change the computation: a new transformers field fails here
    until it is classified."""
    fields = getattr(transformers, CONFIG_CLASSES[family])().to_dict()
    known = READ[family] | set(REQUIRED[family]) | NO_EFFECT[family] | GENERIC_NO_EFFECT
    unclassified = sorted(f for f in fields if f not in known and not f.startswith("_"))
    assert not unclassified, f"{family}: classify these config fields: {unclassified}"
    # and transformers' own defaults import without complaint
    hf_config.check_supported({**fields, "model_type": family})


@pytest.mark.parametrize("family,field", [
    (family, field) for family in sorted(CONFIG_CLASSES)
    for field in sorted(NO_EFFECT[family]) + list(GENERIC_PERTURBED)])
def test_no_effect_fields_leave_transformers_logits_unchanged(family, field):
    """The claim behind NO_EFFECT, checked on transformers itself: the same weights give the
    same logits with the field set to something else."""
    base = _tiny(family)
    default = getattr(transformers, CONFIG_CLASSES[family])().to_dict().get(field)
    other = OTHER_VALUES.get(field) or {bool: lambda v: not v, int: lambda v: v * 2 + 1,
                                        float: lambda v: v + 0.3}[type(default)](default)
    ref, weights = _hf_logits(base)
    out, _ = _hf_logits({**base, field: other}, weights)
    np.testing.assert_allclose(out, ref, atol=1e-6, err_msg=f"{field}={other!r}")
    model_config_from_hf({**base, field: other})      # accepted by the importer


# Fields that change transformers' computation in ways jaxrlhf does not implement.
REFUSED = [
    ("gpt2", {"activation_function": "relu"}, "activation_function"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("gpt2", {"scale_attn_weights": False}, "scale_attn_weights"),
    ("gpt2", {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"head_dim": 8}, "head_dim"),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                   "rope_theta": 1e4}}, "rope_type"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
     "rope_type"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4,
                                   "attention_factor": 0.5}}, "attention_factor"),
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                   "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ("llama", {"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4}, "use_sliding_window"),
    ("qwen2", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ("qwen2", {"hidden_act": "gelu"}, "hidden_act"),
    ("qwen2", {"some_future_option": 1}, "some_future_option"),
]


@pytest.mark.parametrize("family,changes,field", REFUSED)
def test_computation_changing_fields_are_refused_by_name(family, changes, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        model_config_from_hf(_tiny(family, **changes))
    # through a checkpoint directory the error also names the file
    from jaxrlhf.models.hf import load_hf_config
    (tmp_path / "config.json").write_text(json.dumps(_tiny(family, **changes)))
    with pytest.raises(ValueError, match=f"config.json.*{field}"):
        load_hf_config(str(tmp_path))


@pytest.mark.parametrize("family,changes", [
    ("gpt2", {"activation_function": "relu"}),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    ("llama", {"hidden_act": "gelu"}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 2, "max_window_layers": 0}),
])
def test_refused_fields_do_change_transformers_logits(family, changes):
    """These refusals are not over-cautious: with the field set, transformers' logits move."""
    ref, weights = _hf_logits(_tiny(family))
    out, _ = _hf_logits(_tiny(family, **changes), weights)
    assert np.abs(out - ref).max() > 1e-3


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", sorted(ROPE_SCALINGS))
def test_rope_scaling_matches_transformers_beyond_original_context(family, kind, tmp_path):
    """Logits equal transformers' at positions 150..161, far beyond the original 32-token
    context (theta 10000, head_dim 16: wavelengths from 6 to ~20000 tokens fall in all three
    llama3 bands)."""
    import jax.numpy as jnp
    from jaxrlhf.models.hf import load_causal_lm
    rope = {**ROPE_SCALINGS[kind], "rope_theta": 10000.0}
    # larger weights than the default init, so that positions visibly move the logits
    d = _tiny(family, rope_parameters=rope, rope_theta=10000.0, initializer_range=0.2)
    torch.manual_seed(0)
    tm = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**d)).eval()
    tm.save_pretrained(tmp_path)
    ours = load_causal_lm(str(tmp_path))
    assert ours.config.rope_type == kind
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 12))
    positions = 150 + np.arange(12)[None].repeat(2, 0)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), position_ids=torch.tensor(positions)).logits.numpy()
    out, _ = ours(jnp.asarray(ids), jnp.asarray(positions), jnp.ones((2, 12), jnp.int32))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
    # the scaling matters at these positions: the same weights without it disagree
    plain = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**_tiny(family, initializer_range=0.2))).eval()
    plain.load_state_dict(tm.state_dict())
    with torch.no_grad():
        unscaled = plain(input_ids=torch.tensor(ids),
                         position_ids=torch.tensor(positions)).logits.numpy()
    assert np.abs(unscaled - ref).max() > 0.1


def test_legacy_rope_scaling_key_reads_like_rope_parameters():
    """A Llama 3.2 config.json as published (``rope_scaling`` + top-level ``rope_theta``)."""
    legacy = _tiny("llama", rope_theta=500000.0)
    legacy.pop("rope_parameters")
    legacy["rope_scaling"] = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = model_config_from_hf(legacy)
    assert (cfg.rope_type, cfg.rope_theta, cfg.rope_factor, cfg.rope_original_max_len) == (
        "llama3", 500000.0, 32.0, 8192)
    assert model_config_from_hf(hf_dict_from_model_config(cfg)) == cfg
