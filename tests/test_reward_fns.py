"""Python reward functions (``ppo.reward_fns``) and DAPO's dynamic sampling
(``ppo.dynamic_sampling``): scores against the functions recomputed on the decoded texts,
GRPO advantages against numpy, each failure's one-line message, the config checks, and the
group selection against a plain Python loop over the pool."""
import functools

import jax
import numpy as np
import pytest

import reward_functions
from configs.grpo import quickstart
from jaxrlhf import parallel
from jaxrlhf.data.tokenizer import decode_rows
from jaxrlhf.errors import ConfigError, RewardFunctionError
from jaxrlhf.reward_fns import HostRewardFunctions
from jaxrlhf.rl import dynamic_sampling, ppo as ppo_lib
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.trainers import ppo

FN = "tests.reward_functions:"


def grpo_config(sft_workdir, **ppo_options):
    config = quickstart.get_config()
    config.policy_init = sft_workdir
    config.train.batch_size = 16
    config.sampling.penalize_missing_eos = False
    config.ppo.update(num_generations=4, num_minibatches=2, **ppo_options)
    return config


def build(config):
    settings = RunSettings.from_config(config)
    policy, reward, task = ppo.load_inputs(settings)
    examples = task.demonstrations(64, seed=0)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    program = ppo.build(settings, mesh, policy, reward, task, examples)
    batch, _ = ppo.prompt_arrays(policy.tokenizer, examples[:settings.prompts_drawn_per_iteration],
                                 settings)
    return settings, policy.tokenizer, program, batch


def numpy_grpo(scores, group, eps=1e-4):
    """Shao et al. (2024) §4.1.2: (r - mean(group)) / (std(group, ddof=1) + eps)."""
    r = np.asarray(scores, np.float64).reshape(-1, group)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + eps)).reshape(-1)


def test_function_scores_reach_scores_and_advantages(sft_workdir):
    weights = (0.5, -2.0)
    config = grpo_config(sft_workdir, reward_source="gold",
                         reward_fns=(FN + "word_count", FN + "says_good"), reward_weights=weights)
    settings, tok, program, batch = build(config)
    _, r, metrics = jax.jit(functools.partial(
        ppo_lib.rollout, models=program.models, settings=settings.ppo,
        sampling=settings.sampling))(program.init_state(), program.frozen, batch)
    texts = decode_rows(tok, r.response, r.mask)
    words = np.array(reward_functions.word_count([""] * len(texts), texts))
    good = np.array(reward_functions.says_good([""] * len(texts), texts))
    assert words.std() > 0
    want = np.asarray(r.gold) + weights[0] * words + weights[1] * good   # linear in the weights
    np.testing.assert_allclose(r.scores, want, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(metrics["objective/reward_fn/word_count"], words.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["objective/reward_fn/says_good"], good.mean(), rtol=1e-6)
    # kl_in_reward=False: the sequence reward is the score, one advantage on every real token
    mask = np.asarray(r.mask, bool)
    expected = numpy_grpo(want, 4)[:, None] * mask
    np.testing.assert_allclose(np.asarray(r.advantages), expected, rtol=1e-4, atol=1e-4)


def host_rows(texts_by_row, prompt_index):
    """Responses as token rows (right-padded with a mask) from their texts."""
    task = get_task("sentiment")
    ids = [task.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts_by_row]
    width = max(map(len, ids))
    response = np.zeros((len(ids), width), np.int32)
    mask = np.zeros_like(response)
    for i, row in enumerate(ids):
        response[i, :len(row)], mask[i, :len(row)] = row, 1
    return task.tokenizer, np.asarray(prompt_index, np.int32), response, mask


EXAMPLES = [{"prompt": "that movie was", "completion": " good .", "length": 14},
            {"prompt": "my friend said the food was", "completion": " bad .", "length": 27}]


def test_functions_receive_prompts_and_columns_of_their_rows():
    tok, index, response, mask = host_rows(["good .", "so good .", "bad ."], [1, 0, 1])
    host = HostRewardFunctions([FN + "prompt_length_column", FN + "word_count"], EXAMPLES, tok)
    out = jax.jit(host.traceable())(index, response, mask)   # [rows, functions]
    host.raise_failure_after(out)
    np.testing.assert_array_equal(out, [[27, 2], [14, 3], [27, 2]])


@pytest.mark.parametrize("name, message", [
    ("fails_on_bad", "reward function 'tests.reward_functions:fails_on_bad' raised ValueError: "
                     "no bad words on completion 2 of prompt 1 ('my friend said the food was' "
                     "-> 'so bad .')"),
    ("one_short", "reward function 'tests.reward_functions:one_short' returned (2,) scores for "
                  "3 completions (the first: completion 0 of prompt 0 ('that movie was' -> "
                  "'good .')); return one float per completion"),
    ("nan_on_second", "reward function 'tests.reward_functions:nan_on_second' returned nan for "
                      "completion 1 of prompt 0 ('that movie was' -> 'very good good .'); "
                      "scores must be finite"),
])
def test_each_failure_is_one_line_naming_function_and_example(name, message):
    tok, index, response, mask = host_rows(["good .", "very good good .", "so bad ."],
                                           [0, 0, 1])
    host = HostRewardFunctions([FN + "word_count", FN + name], EXAMPLES, tok)
    out = jax.jit(host.traceable())(index, response, mask)
    np.testing.assert_array_equal(out, 0.0)        # zeros while the failure waits
    with pytest.raises(RewardFunctionError) as error:
        host.raise_failure_after(out)
    assert str(error.value) == message


def test_failure_surfaces_from_the_iteration_as_the_one_line(sft_workdir):
    config = grpo_config(sft_workdir, reward_source="none", reward_fns=(FN + "nan_on_second",))
    settings, _, program, batch = build(config)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    with pytest.raises(RewardFunctionError, match=r"^reward function 'tests.reward_functions:"
                       r"nan_on_second' returned nan for completion 1 of prompt 0 \("):
        program.step(program.init_state(), parallel.shard_batch(batch, mesh))


@pytest.mark.parametrize("options, message", [
    (dict(reward_fns=("word_count",)), "is not 'module:function'"),
    (dict(reward_fns=("no_such_module_xyz:f",)), "module 'no_such_module_xyz' cannot be imported"),
    (dict(reward_fns=(FN + "nope",)), "has no attribute 'nope'"),
    (dict(reward_fns=(FN + "not_a_function",)), "is not callable (an int)"),
    (dict(reward_fns=(FN + "word_count",), reward_weights=(1.0, 2.0)),
     "has 2 weights for the 1 functions"),
    (dict(reward_fns=(FN + "word_count", FN + "word_count")), "names two functions called"),
    (dict(reward_source="none"), "scores with ppo.reward_fns only, and none is set"),
    (dict(dynamic_sampling=True, advantage="gae"), "use a group estimator"),
    (dict(dynamic_sampling=True, dynamic_sampling_pool=0), "dynamic_sampling_pool=0 must be"),
])
def test_config_rejects(options, message):
    config = quickstart.get_config()
    config.ppo.update(**options)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunSettings.from_config(config)


def test_settings_reject_a_bare_string():
    from jaxrlhf.sections import PPOSettings
    with pytest.raises(ConfigError, match="must be a tuple"):
        PPOSettings(reward_fns=FN + "word_count")
    assert PPOSettings(reward_fns=[FN + "word_count"]).function_weights == (1.0,)


def reference_selection(scores, group, keep):
    """DAPO's sampling loop, written plainly: walk the groups in draw order, keep those whose
    scores are not all equal until ``keep``; then fill with the first all-equal ones."""
    groups = [list(scores[i:i + group]) for i in range(0, len(scores), group)]
    informative = [i for i, g in enumerate(groups) if len(set(g)) > 1]
    kept = informative[:keep]
    drawn = informative[keep - 1] + 1 if len(informative) >= keep else len(groups)
    fill = [i for i, g in enumerate(groups) if len(set(g)) == 1][:keep - len(kept)]
    return kept + fill, [1.0] * len(kept) + [0.0] * len(fill), drawn, len(informative)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", [1, 3, 5])
def test_selection_matches_the_sequential_loop(seed, keep):
    rng = np.random.default_rng(seed)
    pool, group = 8, 4
    # 0/1 accuracies (many all-equal groups) and now and then one group of equal floats
    scores = rng.binomial(1, rng.uniform(0.05, 0.95), pool * group).astype(np.float32)
    scores[:group] = 0.25 if seed % 2 else scores[:group]
    groups, weights, drawn, found = reference_selection(scores.tolist(), group, keep)
    s = jax.jit(dynamic_sampling.select_groups, static_argnums=(1, 2))(scores, group, keep)
    np.testing.assert_array_equal(s.groups, groups)
    np.testing.assert_array_equal(s.rows, [g * group + j for g in groups for j in range(group)])
    np.testing.assert_array_equal(s.weight, np.repeat(weights, group))
    assert int(s.metrics["dynamic/prompts_drawn"]) == drawn
    assert int(s.metrics["dynamic/informative_groups"]) == found
    assert int(s.metrics["dynamic/kept_uninformative"]) == max(keep - found, 0)
    kept = scores.reshape(pool, group)[np.asarray(s.groups)]
    if found >= keep:    # never a zero-variance group when enough informative ones exist
        assert (kept.max(1) > kept.min(1)).all()


def test_dynamic_sampling_iteration(sft_workdir):
    """One GRPO iteration over a pool of 2 x 4 prompts, rewarded by whether the completion
    says "good": the dynamic/* metrics are consistent, every kept group with loss weight
    is informative and the kept all-equal ones carry none."""
    config = grpo_config(sft_workdir, reward_source="none", reward_fns=(FN + "says_good",),
                         dynamic_sampling=True, dynamic_sampling_pool=2)
    settings, _, program, batch = build(config)
    assert batch["prompt_ids"].shape[0] == 8 == 2 * settings.prompts_per_iteration
    _, r, metrics = jax.jit(functools.partial(
        ppo_lib.rollout, models=program.models, settings=settings.ppo,
        sampling=settings.sampling))(program.init_state(), program.frozen, batch)
    assert r.query.shape[0] == settings.train.batch_size
    groups = np.asarray(r.scores).reshape(4, 4)
    weighted = np.asarray(r.loss_mask).reshape(4, 4, -1).sum((1, 2)) > 0
    np.testing.assert_array_equal(weighted, groups.max(1) > groups.min(1))
    found, kept_flat = (int(metrics[f"dynamic/{k}"]) for k in ("informative_groups",
                                                                "kept_uninformative"))
    assert kept_flat == max(4 - found, 0) == 4 - weighted.sum()
    assert 4 <= int(metrics["dynamic/prompts_drawn"]) <= 8
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    _, step_metrics = program.step(program.init_state(), parallel.shard_batch(batch, mesh))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(step_metrics))
    assert float(step_metrics["dynamic/informative_groups"]) == found


@pytest.mark.slow   # ~35 s; the masking itself is test_selection_* and the iteration above
def test_all_equal_pool_trains_nothing(sft_workdir):
    """Every group all-equal (a constant reward): the batch is filled with zero-weight groups,
    reported as kept_uninformative, and the update leaves the policy exactly where it was."""
    config = grpo_config(sft_workdir, reward_source="none", reward_fns=(FN + "constant",),
                         dynamic_sampling=True, dynamic_sampling_pool=2)
    settings, _, program, batch = build(config)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    before = jax.device_get(jax.tree.leaves(program.init_state().policy))
    state, metrics = program.step(program.init_state(), parallel.shard_batch(batch, mesh))
    assert float(metrics["dynamic/kept_uninformative"]) == 4
    assert float(metrics["dynamic/prompts_drawn"]) == 8
    for a, b in zip(before, jax.device_get(jax.tree.leaves(state.policy))):
        np.testing.assert_array_equal(a, b)
