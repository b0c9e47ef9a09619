"""Model presets are the published open models' shapes: their config.json files (as the model
authors published them, in tests/fixtures/hf_configs/) import to the preset, and the
parameter counts are the published ones. The preset configs validate for every stage."""
import json
import os

import jax
import pytest
from flax import nnx

from conftest import REPO
from jaxrlhf import stages
from jaxrlhf.config import preset_config
from jaxrlhf.models.hf_config import model_config_from_hf
from jaxrlhf.models.presets import PRESETS, preset
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings

FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf_configs")
# preset -> (published config.json, published parameter count)
PUBLISHED = {"gpt2_124m": ("gpt2.json", 124_439_808),
             "qwen2_5_0_5b": ("qwen2.5-0.5b.json", 494_032_768),
             "llama3_2_1b": ("llama-3.2-1b.json", 1_235_814_400),
             "llama3_8b": ("llama-3-8b.json", 8_030_261_248)}


def test_every_preset_is_checked():
    assert set(PUBLISHED) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_the_published_shape(name):
    file, count = PUBLISHED[name]
    with open(os.path.join(FIXTURES, file)) as f:
        published = model_config_from_hf(json.load(f))
    assert published == preset(name)
    abstract = nnx.split(nnx.eval_shape(lambda: CausalLM(preset(name), rngs=nnx.Rngs(0))))[1]
    assert sum(x.size for x in jax.tree.leaves(abstract)) == count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_configs_validate_for_8_devices(name):
    for stage in ("sft", "reward", "dpo", "pretrain", "ppo"):
        stages.validate(stage, preset_config(name, stage), num_devices=8)
    assert RunSettings.from_config(preset_config(name, "ppo")).prompts_per_iteration == 256
    settings = RunSettings.from_config(preset_config(name))
    assert settings.model == preset(name, dtype="bfloat16", scan_layers=True,
                                    remat=settings.model.remat, logits_chunk=64)
    assert settings.model.param_dtype == "float32" and settings.ppo.frozen_dtype == "bfloat16"


def test_config_files_are_the_presets():
    from jaxrlhf.config import load_config_file
    for name in PRESETS:
        path = os.path.join(REPO, "configs", "presets", f"{name}.py")
        assert load_config_file(path) == preset_config(name)
        assert load_config_file(path + ":ppo") == preset_config(name, "ppo")
