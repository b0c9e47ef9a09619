"""LoRA: zero-initialised adapters reproduce the base exactly; only adapters (and a scalar
head) train and live in the optimizer state; merged weights give the adapted model's
logits; a LoRA run checkpoints only what trains, resumes exactly, and loads and exports
merged; LoRA DPO on a bf16 base starts at its reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import metric_rows, run_cli
from jaxrlhf import parallel, scoring, workdir as workdir_lib
from jaxrlhf.config import base_config
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.build import abstract_model, born_sharded, lora_init, random_params
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import reward, supervised

ALL = "q|k|v|o|gate|up|down|lm_head"


def _batch(vocab=256):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, vocab, size=(3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [3], [5]]), jnp.int32)
    return ids, mask


def _adapted(model_cls, cfg, lora, seed=0, **kwargs):
    """Plain base parameters, and the LoRA graph with its trainable and frozen parts."""
    base = random_params(model_cls, cfg, seed, **kwargs)
    init, frozen = lora_init(model_cls, cfg, base, lora=lora, seed=seed + 1,
                             base_dtype="float32", **kwargs)
    graphdef, _ = abstract_model(model_cls, cfg, lora=lora, **kwargs)
    return base, graphdef, init(), frozen


def _variables(state):
    return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@pytest.mark.parametrize("family, scan, model_cls", [
    ("gpt2", False, CausalLM), ("llama", True, CausalLM), ("llama", False, ScalarModel),
    ("gpt2", True, ScalarModel)])
def test_zero_b_adapters_give_exactly_the_base_outputs(family, scan, model_cls):
    cfg = ModelConfig.preset(family, scan_layers=scan)
    lora = LoRAConfig(rank=4, alpha=8.0, targets=ALL)
    base, graphdef, trainable, frozen = _adapted(model_cls, cfg, lora)
    plain, _ = abstract_model(model_cls, cfg)
    if model_cls is ScalarModel:   # the head is new and trains: compare under that head
        base = nnx.State({"model": base["model"], "head": trainable["head"]})
    ids, mask = _batch()
    expected = scoring.forward(plain, base, ids, mask)
    got = scoring.forward(graphdef, lora_lib.join(frozen, trainable), ids, mask)
    np.testing.assert_array_equal(got, expected)
    adapted = lora_lib.adapter_paths(lora_lib.join(frozen, trainable))
    names = {path[-1] for path in adapted}
    untied_head = family == "llama" and model_cls is CausalLM
    assert names == ({"q", "k", "v", "o", "up", "down"} | ({"gate"} if family == "llama"
                                                          else set())
                     | ({"lm_head"} if untied_head else set()))
    tops = {"model"} | ({"head"} if model_cls is ScalarModel
                        else {"lm_head"} if untied_head else set())
    assert {path[0] for path, _ in nnx.to_flat_state(trainable)} == tops


@pytest.mark.parametrize("family, scan, base_dtype", [("gpt2", False, "float32"),
                                                      ("llama", True, "bfloat16")])
def test_merged_logits_equal_the_adapted_models(family, scan, base_dtype):
    cfg = ModelConfig.preset(family, scan_layers=scan)
    lora = LoRAConfig(rank=4, alpha=16.0, targets="q|v|down|lm_head")
    _, graphdef, trainable, frozen = _adapted(CausalLM, cfg, lora)
    frozen = lora_lib.cast(frozen, base_dtype)
    rng = np.random.default_rng(1)
    trainable = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape), trainable)
    full = lora_lib.join(frozen, trainable)
    plain, _ = abstract_model(CausalLM, cfg)
    ids, mask = _batch()
    adapted = scoring.forward(graphdef, full, ids, mask)
    merged = scoring.forward(plain, lora_lib.merge(full, lora.scale), ids, mask)
    base = scoring.forward(plain, frozen, ids, mask)
    assert float(jnp.abs(adapted - base).max()) > 0.1       # the adapters change the model
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)


def _settings(**lora):
    config = base_config()
    config.lora.update(rank=4, **lora)
    config.train.steps = 3
    return RunSettings.from_config(config)


def _opt_shapes(state):
    return sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)


def test_only_adapters_receive_gradients_and_optimizer_state():
    settings = _settings()
    cfg = ModelConfig.preset("gpt2", vocab_size=64)
    params = random_params(CausalLM, cfg, 0)
    policy = workdir_lib.TrainedModel(None, cfg, abstract_model(CausalLM, cfg)[0], params, "")
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    program = supervised.lm_program(settings, cfg, mesh, policy)
    state = program.init_state()
    variables = _variables(state.params)
    assert variables and all(isinstance(v, nnx.LoRAParam) for v in variables)
    adapter_shapes = sorted(v.get_value().shape for v in variables)
    assert _opt_shapes(state) == sorted(adapter_shapes * 2)       # Adam's mu and nu only
    frozen_before = jax.tree.map(np.asarray, program.frozen)
    ids, mask = _batch(64)
    batch = {"input_ids": ids, "attention_mask": mask,
             "loss_mask": mask * (jnp.arange(12) >= 6)}
    grads = jax.grad(lambda p: supervised.lm_loss(program.graphdef, program.full_params(p), batch)[0])(
        state.params)
    flat = dict(nnx.to_flat_state(grads))
    # zero B: the loss is flat in A, and B alone moves first
    assert all(float(jnp.abs(v.get_value()).max()) == 0 for p, v in flat.items() if p[-1] == "lora_a")
    assert all(float(jnp.abs(v.get_value()).max()) > 0 for p, v in flat.items() if p[-1] == "lora_b")
    state, _ = program.step(state, parallel.shard_batch({k: np.asarray(v) for k, v in batch.items()},
                                                       mesh))
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray,
                                                                            program.frozen))


def test_reward_model_trains_adapters_and_its_head():
    settings = _settings(targets="q|v")
    cfg = ModelConfig.preset("gpt2", vocab_size=64)
    start = random_params(ScalarModel, cfg, 0, head_init="normal")
    init, frozen = lora_init(ScalarModel, cfg, start, lora=settings.lora.config, seed=0,
                             base_dtype="bfloat16", head_init="normal")
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    program = reward.build(settings, cfg, mesh, born_sharded(init), frozen)
    state = program.supervised.init_state()
    paths = [p for p, _ in nnx.to_flat_state(state.params)]
    assert {p[-1] for p in paths} == {"lora_a", "lora_b", "kernel", "bias"}
    assert all(p[-1].startswith("lora") or p[0] == "head" for p in paths)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(program.supervised.frozen)
               if jnp.issubdtype(x.dtype, jnp.floating))


def test_lora_sft_resumes_exactly_checkpoints_adapters_and_exports_merged(sft_workdir,
                                                                            tmp_path):
    common = (f"--config.policy_init={sft_workdir}", "--config.lora.rank=4",
              "--config.train.steps=4", "--config.train.log_every=1",
              "--config.train.eval_every=4", "--config.train.checkpoint_every=2",
              "--config.sampling.num_eval_prompts=8", "--config.train.num_samples=0")
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("sft", "configs/sft/quickstart.py", straight, *common)
    run_cli("sft", "configs/sft/quickstart.py", split, *common, "--config.train.run_steps=2")
    resumed = run_cli("sft", "configs/sft/quickstart.py", split, *common)
    assert "resuming from step 2" in resumed.stdout
    assert metric_rows(split) == metric_rows(straight)

    # the checkpoint holds the adapters only; the card points to the base
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    from jaxrlhf import checkpoint
    _, tree = checkpoint.restore_subtree(str(straight / "checkpoints"), "params", device)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert leaves and all(str(path[-2].key).startswith("lora") for path, _ in leaves)
    card = workdir_lib.read_json(str(straight), workdir_lib.MODEL_CARD)
    assert card["base"] == sft_workdir and card["lora"]["rank"] == 4

    # loading gives the merged plain model, equal to base + adapters
    loaded = workdir_lib.load_model(str(straight), CausalLM)
    base = workdir_lib.load_model(sft_workdir, CausalLM)
    lora = LoRAConfig(**card["lora"])
    graphdef, abstract = abstract_model(CausalLM, base.model_config, lora=lora)
    trainable = checkpoint.nnx_state_from_tree(lora_lib.split_trainable(abstract)[0], tree)
    _, abstract_frozen = lora_lib.split_trainable(abstract)
    full = lora_lib.join(lora_lib.frozen_part(abstract_frozen, base.params), trainable)
    ids, mask = _batch(base.model_config.vocab_size)
    adapted = scoring.forward(graphdef, full, ids, mask)
    np.testing.assert_allclose(scoring.forward(loaded.graphdef, loaded.params, ids, mask),
                               adapted, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(adapted - scoring.forward(base.graphdef, base.params, ids, mask)).max()) > 0

    # export writes the merged weights that transformers reads back
    pytest.importorskip("torch")
    import torch
    import transformers
    from jaxrlhf.cli import export
    export(str(straight), str(tmp_path / "hf"))
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    pos = scoring.positions_from_mask(mask)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(np.asarray(ids)), position_ids=torch.tensor(np.asarray(pos)),
                 attention_mask=torch.tensor(np.asarray(mask))).logits.numpy()
    assert float(np.max(np.abs((np.asarray(adapted) - ref) * np.asarray(mask)[..., None]))) < 1e-4


def test_lora_dpo_on_a_bf16_base_starts_exactly_at_its_reference(sft_workdir, tmp_path):
    """At step 0 the adapted policy is its own reference — the base as the adapters see it,
    here stored in bf16 — so every implicit reward is 0 and DPO's loss is log 2."""
    run_cli("dpo", "configs/dpo/quickstart.py", tmp_path, f"--config.policy_init={sft_workdir}",
            "--config.lora.rank=4", "--config.lora.base_dtype=bfloat16",
            "--config.train.steps=2", "--config.train.eval_every=2",
            "--config.train.checkpoint_every=2", "--config.reward.num_train_pairs=64",
            "--config.reward.num_eval_pairs=32", "--config.sampling.num_eval_prompts=8",
            "--config.train.num_samples=0")
    first = metric_rows(tmp_path)[0]
    assert first["eval/rewards/chosen"] == 0.0 and first["eval/rewards/rejected"] == 0.0
    assert first["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
