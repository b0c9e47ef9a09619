"""Online DPO (``jaxrlhf.trainers.online_dpo``): a round's pairs are sampled from the
current policy (their log-probs under it are the sampler's own), labelled best against
worst by the reward (a numpy ranking; Bradley–Terry draws at their sigmoid rate), with the
reference fixed to the SFT policy; the stage is in the table, and a killed run resumes to
the uninterrupted run's logs."""
import jax
import numpy as np
import pytest

import jaxrlhf
from conftest import metric_rows, read_summary
from jaxrlhf import parallel, stages
from jaxrlhf.config import base_config
from jaxrlhf.data.tokenizer import encode_prompts
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.trainers import dpo_program, online_dpo
from jaxrlhf.workdir import RewardModel, TrainedModel

K, PROMPTS = 3, 8


@pytest.fixture(scope="module")
def tiny():
    """Online DPO on the sentiment task with a random 1-layer policy and a random reward
    model (continuous scores, so no ties), on the emulated devices."""
    config = base_config()
    config.online_dpo.samples_per_prompt, config.online_dpo.prompts_per_round = K, PROMPTS
    config.online_dpo.steps_per_round = 1
    config.train.batch_size, config.train.steps = PROMPTS, 2
    config.sampling.response_length = 6
    config.sampling.penalize_missing_eos = False   # else most random responses tie at it
    settings = RunSettings.from_config(config)
    task = get_task("sentiment")
    tok = task.tokenizer
    cfg = ModelConfig.preset("gpt2", vocab_size=len(tok), d_model=32, n_layers=1, d_ff=64,
                             max_seq_len=64)
    policy = TrainedModel(tok, cfg, abstract_model(CausalLM, cfg)[0],
                          random_params(CausalLM, cfg, 0), workdir="")
    scorer = TrainedModel(tok, cfg, abstract_model(ScalarModel, cfg, head_init="normal")[0],
                          random_params(ScalarModel, cfg, 1, head_init="normal"), workdir="")
    mesh = parallel.make_mesh(settings.mesh)
    program = dpo_program.build(settings, policy, mesh)
    rounds = online_dpo.Rounds(settings, program, policy, RewardModel(scorer, 1.0, 0.0), task,
                               mesh)
    ids, mask = encode_prompts(tok, task.prompts(PROMPTS, seed=0),
                                          settings.sampling.prompt_length)
    prompts = parallel.shard_batch({"prompt_ids": ids, "prompt_mask": mask}, mesh)
    return rounds, policy, prompts, mesh


def perturbed(params, seed, scale=0.5):
    """The parameters plus Gaussian noise: a policy that has moved away from the SFT one."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])


def log_probs(policy, params, pairs):
    chosen, rejected, *_ = dpo_program.pair_log_probs(policy.graphdef, params, pairs)
    return np.asarray(chosen), np.asarray(rejected)


def test_a_rounds_pairs_are_sampled_from_the_current_policy_with_the_sft_reference(tiny):
    rounds, policy, prompts, mesh = tiny
    current = perturbed(policy.params, seed=3)
    r = rounds.pairs(parallel.place(current, mesh, rounds.settings.rules), prompts, 0, np.random.default_rng(0))
    assert len(r.chosen) == PROMPTS and r.stats.ties == 0
    # At temperature 1 the sampler's log-probs of the responses it drew are the policy's.
    chosen, rejected = log_probs(policy, current, r.pairs)
    np.testing.assert_allclose(chosen, r.samples["logprob"][r.chosen], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rejected, r.samples["logprob"][r.rejected], rtol=1e-4,
                               atol=1e-4)
    # The reference log-probs are the SFT policy's, not the current one's.
    sft_chosen, sft_rejected = log_probs(policy, policy.params, r.pairs)
    np.testing.assert_allclose(r.pairs["ref_chosen_logps"], sft_chosen, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.pairs["ref_rejected_logps"], sft_rejected, rtol=1e-5,
                               atol=1e-5)
    assert np.abs(sft_chosen - chosen).max() > 0.1        # the two policies differ


def test_the_round_step_samples_with_the_state_it_is_given(tiny):
    """One round of one step on one batch of all its pairs: the step's mean policy log-prob
    of the chosen responses is the sampler's, for whichever parameters the state holds."""
    rounds, policy, prompts, mesh = tiny
    init_state, _, _ = online_dpo.online_state(rounds.program, mesh)
    seen = []
    for seed in (3, 4):
        state = init_state()
        state = state.replace(params=parallel.place(perturbed(state.params, seed), mesh, rounds.settings.rules))
        expected = rounds.pairs(state.params, prompts, 0, rounds.rng(0))
        state, metrics = rounds(state, prompts)
        assert float(metrics["logps/chosen"]) == pytest.approx(
            expected.samples["logprob"][expected.chosen].mean(), abs=1e-4)
        assert int(state.step) == 1 and int(state.counts["candidates"]) == PROMPTS
        seen.append(float(metrics["logps/chosen"]))
    assert abs(seen[0] - seen[1]) > 0.1


def test_labels_follow_the_reward_best_against_worst(tiny):
    rounds, policy, prompts, mesh = tiny
    r = rounds.pairs(parallel.place(policy.params, mesh, rounds.settings.rules), prompts, 0,
                     np.random.default_rng(0))
    score = r.samples["score"]
    for pair, (c, w) in enumerate(zip(r.chosen, r.rejected)):
        group = list(range(pair * K, pair * K + K))                  # one pair per prompt
        assert c == max(group, key=lambda i: score[i]) and w == min(group, key=lambda i: score[i])
        row = np.concatenate([r.samples["query"][c], r.samples["response"][c]])
        np.testing.assert_array_equal(r.pairs["chosen_ids"][pair], row)
    assert np.all(r.pairs["margin"] > 0)


def test_all_tied_prompts_are_dropped_and_counted():
    score = np.array([1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 0.0, -1.0, 0.5])     # 3 prompts, K = 3
    chosen, rejected, stats = online_dpo.label_best_and_worst(
        score, 3, np.random.default_rng(0), mode="max", temperature=1.0)
    np.testing.assert_array_equal(chosen, [1, 8])
    np.testing.assert_array_equal(rejected, [0, 7])
    assert (stats.candidates, stats.ties, stats.ties_dropped) == (3, 1, 1)


def test_bradley_terry_labels_prefer_the_best_at_the_sigmoid_rate():
    n, gap, temperature = 4000, 0.5, 0.5
    score = np.tile([0.0, gap], n)                                       # K = 2
    chosen, _, _ = online_dpo.label_best_and_worst(
        score, 2, np.random.default_rng(1), mode="bradley_terry", temperature=temperature)
    p = 1.0 / (1.0 + np.exp(-gap / temperature))
    rate = np.mean(chosen % 2 == 1)
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_online_dpo_is_a_stage_of_the_table():
    stage = stages.get("online_dpo")
    assert stage.train is online_dpo.train and stage.produces == "policy"
    assert set(stage.reads) == {"policy", "reward_model"}


def gold_config(sft_workdir, **overrides):
    return jaxrlhf.load_config(
        "configs/online_dpo/quickstart.py", policy_init=sft_workdir,
        **{"online_dpo.reward_source": "gold", "online_dpo.prompts_per_round": 32,
           "train.batch_size": 8, "train.eval_every": 2, "train.checkpoint_every": 1,
           "sampling.num_eval_prompts": 16, "train.tensorboard": False, **overrides})


def test_a_run_reports_every_methods_summary_keys_and_its_pair_counts(sft_workdir, tmp_path):
    config = gold_config(sft_workdir, **{"train.steps": 1, "online_dpo.steps_per_round": 2})
    summary = jaxrlhf.run("online_dpo", config, str(tmp_path)).summary
    assert {"gold_before", "gold_after", "gold_before_stderr", "gold_after_stderr",
            "kl"} <= set(summary) and summary["kl"] > 0
    assert summary["rounds"] == 1 and summary["steps"] == 2
    counts = summary["label_counts"]
    assert counts["candidates"] == 32 and summary["pairs"] == 32 - counts["ties_dropped"]
    assert metric_rows(tmp_path)[-1]["online/pairs"] == summary["pairs"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_runs_logs(sft_workdir, tmp_path):
    config = gold_config(sft_workdir, **{"train.steps": 2})
    jaxrlhf.run("online_dpo", config, str(tmp_path / "whole"))
    config.train.run_steps = 1
    jaxrlhf.run("online_dpo", config, str(tmp_path / "cut"))
    config.train.run_steps = 0
    jaxrlhf.run("online_dpo", config, str(tmp_path / "cut"))
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "whole")
    assert read_summary(tmp_path / "cut") == read_summary(tmp_path / "whole")
