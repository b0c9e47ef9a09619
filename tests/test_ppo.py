"""PPO end to end on the built-in task: gold reward rises with finite KL, exact resume,
and the single-program iteration equals the phased fallback."""
import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs.ppo import quickstart
from conftest import metric_rows, read_summary, run_cli
from jaxrlhf import parallel
from jaxrlhf.rl import ppo as ppo_lib
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import ppo


GOLD = ("--config.ppo.reward_source=gold", "--config.ppo.value_init=policy")
SMALL = ("--config.train.batch_size=32", "--config.ppo.num_minibatches=2",
         "--config.ppo.ppo_epochs=2", "--config.train.log_every=1")


def test_ppo_with_gold_reward_raises_gold(sft_workdir, tmp_path):
    workdir = tmp_path / "ppo"
    run_cli("ppo", "configs/ppo/quickstart.py", workdir, f"--config.policy_init={sft_workdir}",
         *GOLD)
    s = read_summary(workdir)
    gain = s["gold_after"] - s["gold_before"]
    assert gain > 3 * np.hypot(s["gold_before_stderr"], s["gold_after_stderr"]), s
    assert np.isfinite(s["kl"]) and np.isfinite(s["train_kl"]), s


@pytest.mark.slow   # tests/test_multiprocess.py covers 2 processes (and resume) by default
def test_ppo_resumes_exactly_across_processes(sft_workdir, tmp_path):
    common = (f"--config.policy_init={sft_workdir}", *GOLD, *SMALL, "--config.train.steps=6",
              "--config.train.eval_every=3", "--config.train.checkpoint_every=2")
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("ppo", "configs/ppo/quickstart.py", straight, *common)
    run_cli("ppo", "configs/ppo/quickstart.py", split, *common, "--config.train.run_steps=3")
    resumed = run_cli("ppo", "configs/ppo/quickstart.py", split, *common)
    assert "resuming from step 3" in resumed.stdout
    assert metric_rows(split) == metric_rows(straight)


@pytest.mark.parametrize("options", [
    pytest.param({}, marks=pytest.mark.slow),   # the all-terms case below runs the same phases
    # every optional term on: KL as a loss (k3) with the adaptive controller, entropy bonus,
    # pretraining mix, reward whitening, TF-style Adam, gradient accumulation, a value head
    # on the policy's trunk
    dict(kl_in_reward=False, kl_estimator="k3", adaptive_kl=True, ent_coef=0.01,
         ptx_coef=0.1, whiten_rewards=True, tf_adam=True, grad_accum=2, value_init="shared"),
    pytest.param(dict(whiten_advantages=False), marks=pytest.mark.slow),
    # critic-free GRPO on LoRA adapters (merged for sampling), 4 responses per prompt
    dict(advantage="grpo", num_generations=4, kl_in_reward=False, kl_estimator="k3",
         lora_rank=4),
])
def test_single_program_equals_phased(sft_workdir, options):
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    options = dict(options)
    config.lora.rank = options.pop("lora_rank", 0)
    config.train.batch_size = 16
    config.ppo.update(**{"reward_source": "gold", "value_init": "policy",
                         "num_minibatches": 2, "ppo_epochs": 2, **options})
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    settings = RunSettings.from_config(config)
    policy, reward, task = ppo.load_inputs(settings)
    tok = policy.tokenizer
    batch, _ = ppo.prompt_arrays(tok, task.demonstrations(settings.prompts_per_iteration,
                                                          seed=0), settings)
    results = []
    for single in (True, False):
        config.ppo.single_program = single
        program = ppo.build(RunSettings.from_config(config), mesh, policy, reward, task)
        state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
        for _ in range(2):
            state, metrics = program.step(state, parallel.shard_batch(batch, mesh))
        results.append((jax.device_get(metrics), jax.device_get(jax.tree.leaves(state.policy))))
    (m1, p1), (m2, p2) = results
    for key in ("objective/kl", "objective/gold", "loss/policy", "loss/value",
                "objective/kl_coef"):
        if key == "loss/value" and not settings.ppo.uses_value_model:
            assert key not in m1 and state.value is None
            continue
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-4, atol=1e-6, err_msg=key)
        assert np.isfinite(m1[key]), key
    if options.get("adaptive_kl"):
        assert m1["objective/kl_coef"] != config.ppo.kl_coef  # the controller moved beta
    if config.lora.rank:  # only the adapters train, and they moved off zero
        variables = jax.tree.leaves(state.policy, is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert variables and all(isinstance(v, nnx.LoRAParam) for v in variables)
        assert any(np.abs(b).max() > 0 for b in p1)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("whiten", [True, False])
def test_whiten_advantages_switches_per_minibatch_whitening(sft_workdir, whiten):
    """Equal advantages on every real token whiten to zero: with whitening (detail 11) the
    policy gradient vanishes and the policy stays put; without it the policy moves."""
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    config.train.batch_size = 16
    config.ppo.update(reward_source="gold", value_init="policy", num_minibatches=2,
                      ppo_epochs=1, whiten_advantages=whiten)
    settings = RunSettings.from_config(config)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    policy, reward, task = ppo.load_inputs(settings)
    program = ppo.build(settings, mesh, policy, reward, task)
    state = program.init_state()
    batch, _ = ppo.prompt_arrays(policy.tokenizer, task.demonstrations(16, seed=0), settings)
    state, rollout, _ = jax.jit(functools.partial(ppo_lib.rollout, models=program.models,
                                               settings=settings.ppo,
                                               sampling=settings.sampling))(
        state, program.frozen, batch)
    rollout = rollout._replace(advantages=0.5 * rollout.mask.astype(np.float32))  # exact mean
    new, _ = jax.jit(functools.partial(ppo_lib.update, ptx=None, models=program.models,
                                       settings=settings.ppo,
                                       temperature=settings.sampling.temperature,
                                       optimizers=ppo.make_optimizers(settings)))(
        state, program.frozen, rollout)
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(new.policy), jax.tree.leaves(state.policy)))
    assert (moved == 0.0) if whiten else (moved > 1e-4), moved


def test_sample_cli_writes_completions(sft_workdir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the movie was\nmy friend said the food was\n")
    out = tmp_path / "out.jsonl"
    run_cli("sample", f"--checkpoint={sft_workdir}", f"--prompts={prompts}", f"--output={out}",
            "--greedy", "--max_new_tokens=12", timeout=300)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the movie was", "my friend said the food was"]
    # the SFT policy has learned the task's grammar: responses end with a full stop
    assert all(r["completion"].strip().endswith(".") for r in rows), rows


def test_missing_reward_model_is_a_clear_error(sft_workdir, tmp_path):
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    config.reward_init = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="reward_normalization.json is missing"):
        ppo.load_inputs(RunSettings.from_config(config))
    config.reward_init = sft_workdir  # an SFT run is not a reward model
    with pytest.raises(FileNotFoundError, match="reward-model run"):
        ppo.load_inputs(RunSettings.from_config(config))


@pytest.mark.parametrize("dtype, bound, options", [
    ("float32", 1e-4, {}),
    ("bfloat16", 0.1, {"mask_truncated": True, "overlong_buffer": 4}),   # DAPO's terms compile
])
def test_sampler_and_trainer_log_probs_agree(sft_workdir, dtype, bound, options):
    """``policy/logprob_gap_*``: the sampler's log-probs of its tokens against the training
    forward's before the first update — ~0 in fp32; in bf16 compute bounded, and reported
    (nonzero: the two programs round differently)."""
    import dataclasses
    from jaxrlhf.models.build import abstract_model
    from jaxrlhf.models.transformer import CausalLM
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    config.train.batch_size = 16
    config.ppo.update(reward_source="gold", value_init="policy", num_minibatches=2,
                      ppo_epochs=1, **options)
    settings = RunSettings.from_config(config)
    policy, reward, task = ppo.load_inputs(settings)
    model_config = policy.model_config.replace(dtype=dtype)
    policy = dataclasses.replace(policy, model_config=model_config,
                                 graphdef=abstract_model(CausalLM, model_config)[0])
    batch, _ = ppo.prompt_arrays(policy.tokenizer, task.demonstrations(
        settings.prompts_per_iteration, seed=0), settings)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    program = ppo.build(settings, mesh, policy, reward, task)
    state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
    _, metrics = program.step(state, parallel.shard_batch(batch, mesh))
    gap_max, gap_mean = (float(metrics[f"policy/logprob_gap_{k}"]) for k in ("max", "mean"))
    assert 0.0 <= gap_mean <= gap_max < bound, (gap_mean, gap_max)
    if dtype == "bfloat16":
        assert gap_max > 0.0
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))


def test_old_log_probs_from_the_sampler_give_the_forwards_iteration(sft_workdir):
    """``ppo.old_logprobs="sampler"`` drops the old-log-prob forward: from the same state
    and samples, one GRPO iteration (one update on the whole batch) ends at the weights
    the recomputed log-probs give, to fp32 rounding, and logs no gap (there is no forward
    to compare with)."""
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    config.train.batch_size = 16
    config.ppo.update(reward_source="gold", advantage="grpo", num_generations=4,
                      kl_in_reward=False, kl_estimator="k3", kl_coef=0.04, num_minibatches=1,
                      ppo_epochs=1)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    ends = {}
    for source in ("forward", "sampler"):
        config.ppo.old_logprobs = source
        settings = RunSettings.from_config(config)
        policy, reward, task = ppo.load_inputs(settings)
        batch, _ = ppo.prompt_arrays(policy.tokenizer, task.demonstrations(
            settings.prompts_per_iteration, seed=0), settings)
        program = ppo.build(settings, mesh, policy, reward, task)
        state = jax.jit(program.init_state, out_shardings=program.state_shardings)()
        state, metrics = program.step(state, parallel.shard_batch(batch, mesh))
        ends[source] = (jax.device_get(state.policy), jax.device_get(metrics))
    (forward, m_forward), (sampler, m_sampler) = ends["forward"], ends["sampler"]
    assert "policy/logprob_gap_max" in m_forward and "policy/logprob_gap_max" not in m_sampler
    assert float(m_forward["policy/logprob_gap_max"]) < 1e-4
    moved = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(forward), jax.tree.leaves(jax.device_get(policy.params))))
    apart = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(forward),
                                                            jax.tree.leaves(sampler)))
    assert moved > 1e-4 and apart < 1e-3 * moved, (moved, apart)
    assert float(m_sampler["objective/kl"]) == pytest.approx(float(m_forward["objective/kl"]),
                                                             abs=1e-5)
