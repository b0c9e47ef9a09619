"""Memory options change memory, never the numbers: chunked log-probs and LM loss equal the
unchunked ones (values and gradients), every remat policy and layer layout gives the same
loss and gradients as none on every stage's loss, optimizer state stays fp32 under bf16
compute, and PPO's frozen models can be bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf import losses, scoring
from jaxrlhf.config import base_config
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.config import REMAT_POLICIES, ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.settings import RunSettings


def _lm_batch(rng, batch=3, length=13, vocab=256):
    lengths = rng.integers(4, length + 1, size=batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = mask * (np.arange(length)[None] >= 3)
    ids = rng.integers(2, vocab, size=(batch, length)) * mask
    return {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
            "loss_mask": jnp.asarray(loss_mask, jnp.int32)}


def _model(cfg, cls=CausalLM, **kwargs):
    graphdef, _ = abstract_model(cls, cfg, **kwargs)
    return graphdef, random_params(cls, cfg, 0, **kwargs)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert len(flat_a) == len(flat_b) > 0
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", ["gpt2", "llama"])   # tied and untied LM heads
@pytest.mark.parametrize("chunk", [3, 5, 64])            # not dividing, and one chunk
def test_chunked_lm_loss_equals_unchunked(family, chunk):
    cfg = ModelConfig.preset(family)
    batch = _lm_batch(np.random.default_rng(0))

    def value_and_grad(c):
        graphdef, params = _model(cfg.replace(logits_chunk=c))
        return jax.jit(jax.value_and_grad(
            lambda p: losses.lm_nll(graphdef, p, batch)[0]))(params)

    (loss, grads), (loss_c, grads_c) = value_and_grad(0), value_and_grad(chunk)
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    _assert_trees_close(grads_c, grads)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_response_log_probs_and_entropies_equal_unchunked(temperature):
    cfg = ModelConfig.preset("llama")
    batch = _lm_batch(np.random.default_rng(1))
    seq, mask = batch["input_ids"], batch["attention_mask"]

    def run(c):
        graphdef, params = _model(cfg.replace(logits_chunk=c))

        def f(p):
            logp, ent = scoring.response_log_probs(graphdef, p, seq, mask, 5, temperature,
                                                  with_entropy=True)
            return (logp * mask[:, 5:]).sum() + 0.1 * ent.sum(), (logp, ent)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (_, (logp, ent)), grads = run(0)
    (_, (logp_c, ent_c)), grads_c = run(3)
    assert logp.shape == ent.shape == (3, 8)
    np.testing.assert_allclose(logp_c, logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent_c, ent, rtol=1e-5, atol=1e-6)
    _assert_trees_close(grads_c, grads)


def test_chunked_loss_gradient_holds_no_full_logits():
    """The compiled gradient of the unchunked loss holds several [batch, seq, vocab] fp32
    arrays (logits, softmax, their gradient); the chunked one saves at least two of them
    (the rest of its scratch memory is the trunk's activations)."""
    cfg = ModelConfig.preset("llama", vocab_size=8192, max_seq_len=256)
    batch = _lm_batch(np.random.default_rng(2), batch=4, length=256, vocab=8192)
    logits_bytes = 4 * 256 * 8192 * 4

    def scratch(c):
        graphdef, params = _model(cfg.replace(logits_chunk=c))
        grad = jax.jit(jax.grad(lambda p: losses.lm_nll(graphdef, p, batch)[0]))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert scratch(16) < scratch(0) - 2 * logits_bytes


def _ppo_inputs(cfg, rng, batch=4, prompt=5, response=6):
    from jaxrlhf.rl.ppo import Models
    policy, params = _model(cfg)
    value, value_params = _model(cfg, ScalarModel, head_init="normal")
    models = Models(policy=policy, ref=policy, value=value, reward=None, gain=1.0, bias=0.0,
                    gold=None, eos_id=1, pad_id=0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    mask = jnp.asarray(np.arange(response)[None] < rng.integers(1, response + 1, (batch, 1)),
                       jnp.int32)
    data = {"query": jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, prompt)), jnp.int32),
            "query_mask": jnp.ones((batch, prompt), jnp.int32),
            "response": jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, response)),
                                    jnp.int32) * mask,
            "mask": mask, "loss_mask": mask, "logprobs": f(batch, response) - 3, "advantages": f(batch, response),
            "values": f(batch, response), "returns": f(batch, response),
            "ref_logprobs": f(batch, response) - 3}
    return models, {"policy": params, "value": value_params}, data


def _stage_loss(stage, cfg):
    """(loss of params, params) for ``stage``'s own loss on a fixed batch."""
    rng = np.random.default_rng(3)
    if stage == "sft":
        from jaxrlhf.trainers.supervised import lm_loss
        graphdef, params = _model(cfg)
        batch = _lm_batch(rng)
        return lambda p: lm_loss(graphdef, p, batch)[0], params
    if stage == "reward":
        from jaxrlhf.trainers.reward import reward_loss
        graphdef, params = _model(cfg, ScalarModel, head_init="normal")
        a, b = _lm_batch(rng), _lm_batch(rng)
        batch = {"chosen_ids": a["input_ids"], "chosen_mask": a["attention_mask"],
                 "rejected_ids": b["input_ids"], "rejected_mask": b["attention_mask"],
                 "margin": jnp.ones(3)}
        return lambda p: reward_loss(graphdef, p, batch, use_margin=True,
                                     center_coef=0.01)[0], params
    from jaxrlhf.rl.ppo import Frozen, ppo_loss
    import dataclasses
    settings = dataclasses.replace(RunSettings.from_config(base_config()).ppo, ent_coef=0.01,
                                   kl_in_reward=False, kl_estimator="k3")
    models, params, data = _ppo_inputs(cfg, rng)
    return lambda p: ppo_loss(p, data, models=models, settings=settings, temperature=0.7,
                              kl_coef=0.05, frozen=Frozen(ref=None, reward=None))[0], params


# Every stage, every policy and both layer layouts, in 6 cases (the full product is slow).
REMAT_CASES = [("sft", "full", False), ("sft", "dots_with_no_batch_dims_saveable", True),
               ("reward", "full", True), ("reward", "dots_saveable", False),
               ("ppo", "dots_with_no_batch_dims_saveable", False),
               ("ppo", "dots_saveable", True)]
ALL_REMAT_CASES = [(stage, remat, scan) for stage in ("sft", "reward", "ppo")
                   for remat in REMAT_POLICIES if remat != "none" for scan in (False, True)]


@pytest.mark.parametrize("stage,remat,scan", [
    *REMAT_CASES, *(pytest.param(*case, marks=pytest.mark.slow)
                    for case in ALL_REMAT_CASES if case not in REMAT_CASES)])
def test_remat_policies_give_the_same_loss_and_gradients(stage, remat, scan):
    """Each stage's loss and gradient under ``remat`` equal those without remat, in either
    layer layout; the remat is really in the program."""
    base = ModelConfig.preset("llama", scan_layers=scan)

    def run(policy):
        loss_fn, params = _stage_loss(stage, base.replace(remat=policy))
        return (jax.jit(jax.value_and_grad(loss_fn))(params),
                str(jax.make_jaxpr(jax.grad(loss_fn))(params)))

    (loss, grads), plain = run("none")
    (loss_r, grads_r), rematted = run(remat)
    assert "remat" not in plain and "remat" in rematted
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    _assert_trees_close(grads_r, grads)


def test_optimizer_state_stays_fp32_under_bf16_compute():
    from jaxrlhf import parallel
    from jaxrlhf.trainers import supervised
    c = base_config()
    c.model.update(dtype="bfloat16", vocab_size=64)
    settings = RunSettings.from_config(c)
    program = supervised.lm_program(settings, settings.model, parallel.make_mesh({"data": -1}))
    dtypes = {x.dtype for x in jax.tree.leaves(program.abstract_state.opt_state)
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(program.abstract_state.params)} == {
        jnp.dtype(jnp.float32)}


def tiny_ppo_program(**ppo_changes):
    """A PPO program on random GPT-2 models (one device), its state after one iteration on
    random prompts, and that iteration's metrics."""
    import types
    from jaxrlhf import parallel
    from jaxrlhf.trainers import ppo
    from jaxrlhf.workdir import RewardModel, TrainedModel
    c = base_config()
    c.model.vocab_size = 64
    c.train.batch_size = 8
    c.sampling.update(prompt_length=4, response_length=6)
    c.ppo.update(num_minibatches=2, ppo_epochs=1, **ppo_changes)
    settings = RunSettings.from_config(c)
    tokenizer = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
    policy = TrainedModel(tokenizer, settings.model, *_model(settings.model), workdir="")
    reward = TrainedModel(tokenizer, settings.model,
                          *_model(settings.model, ScalarModel, head_init="normal"), workdir="")
    mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
    program = ppo.build(settings, mesh, policy, RewardModel(reward, 1.0, 0.0), task=None)
    prompts = np.random.default_rng(0).integers(2, 64, size=(8, 4)).astype(np.int32)
    batch = parallel.shard_batch({"prompt_ids": prompts,
                                  "prompt_mask": np.ones_like(prompts)}, mesh)
    state, metrics = program.step(program.init_state(), batch)
    return program, state, jax.device_get(metrics)


def test_frozen_models_in_bf16_hold_half_the_memory_and_no_optimizer_state():
    """``ppo.frozen_dtype=bfloat16``: the reference and reward parameters are bf16 and PPO's
    state has no optimizer state for them; the iteration still runs and its KL stays small
    (the reference differs from the policy only by bf16 rounding)."""
    fp32, state32, metrics32 = tiny_ppo_program(frozen_dtype="")
    bf16, state16, metrics16 = tiny_ppo_program(frozen_dtype="bfloat16")
    size = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    assert {x.dtype for x in jax.tree.leaves(bf16.frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert size(bf16.frozen) * 2 == size(fp32.frozen)
    assert set(vars(state16)) == set(vars(state32))   # same state: no frozen optimizer
    assert np.isfinite(metrics16["objective/kl"]) and abs(metrics16["objective/kl"]) < 0.05
    assert metrics32["objective/kl"] == 0.0


@pytest.mark.parametrize("stage,axis", [("sft", "fsdp"), ("ppo", "data")])
def test_activations_are_split_over_the_batch_axes(stage, axis):
    """On 8 devices each holds ~1/8 of the activations one device holds for the same global
    batch. Two ways this failed: FSDP-sharded weights led XLA to split the hidden axis of
    the residual stream and keep the MLP's activations whole on every device; and PPO's
    minibatches, gathered by a random permutation, were replicated."""
    from jaxrlhf import memory, parallel, stages
    from jaxrlhf.config import load_config_file
    c = load_config_file(f"configs/{stage}/quickstart.py")
    c.model.update(vocab_size=68, d_ff=1024)
    c.ppo.single_program = False
    settings = RunSettings.from_config(c)
    program = "step" if stage == "sft" else "optimise"
    temp = {}
    for n in (8, 1):
        mesh = parallel.make_mesh({axis: n}, devices=jax.devices()[:n])
        jitted, args, _ = stages.get(stage).dry_run(settings, mesh)[program]
        temp[n] = memory.compiled_memory(jitted.lower(*args).compile())["temp_bytes"]
    assert temp[8] < 0.3 * temp[1], temp
