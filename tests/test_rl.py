"""jaxrlhf.rl against independent numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.rl import advantages as adv_lib, kl as kl_lib, rewards as rw


def _padded(rng, B=5, T=9):
    lengths = rng.integers(1, T + 1, size=B)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    return lengths, mask


def _np_gae(rewards, values, lengths, gamma, lam):
    B, T = rewards.shape
    adv = np.zeros((B, T)); ret = np.zeros((B, T))
    for b in range(B):
        L = lengths[b]; last = 0.0
        for t in reversed(range(L)):
            nv = values[b, t + 1] if t + 1 < L else 0.0
            delta = rewards[b, t] + gamma * nv - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
            ret[b, t] = last + values[b, t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_loop(gamma, lam):
    rng = np.random.default_rng(0)
    lengths, mask = _padded(rng)
    r = rng.normal(size=mask.shape).astype(np.float32)
    v = rng.normal(size=mask.shape).astype(np.float32)  # garbage on padding on purpose
    adv, ret = jax.jit(adv_lib.gae, static_argnums=(3, 4))(r, v, mask, gamma, lam)
    adv_np, ret_np = _np_gae(r, v, lengths, gamma, lam)
    np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(shift_mean):
    rng = np.random.default_rng(1)
    _, mask = _padded(rng, B=6, T=7)
    x = rng.normal(2.0, 3.0, size=mask.shape).astype(np.float32)
    vals = x[mask == 1]
    mean, var = vals.mean(), vals.var(ddof=1)
    ref = (x - mean) / np.sqrt(var + 1e-8) + (0 if shift_mean else mean)
    out = np.asarray(adv_lib.masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean))
    np.testing.assert_allclose(out[mask == 1], ref[mask == 1], rtol=1e-4, atol=1e-4)
    assert np.all(out[mask == 0] == 0)
    if shift_mean:
        assert abs(out[mask == 1].mean()) < 1e-4


def test_kl_estimators_vs_exact():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(6)); q = rng.dirichlet(np.ones(6))
    exact = float((p * (np.log(p) - np.log(q))).sum())
    x = rng.choice(6, size=200_000, p=p)
    logp, logq = jnp.log(p[x]), jnp.log(q[x])
    k1 = kl_lib.kl_estimate(logp, logq, "k1")
    k2 = kl_lib.kl_estimate(logp, logq, "k2")
    k3 = kl_lib.kl_estimate(logp, logq, "k3")
    for k in (k1, k3):
        se = float(jnp.std(k)) / np.sqrt(x.size)
        assert abs(float(k.mean()) - exact) < 5 * se + 1e-4
    assert float(k3.min()) >= 0.0
    np.testing.assert_allclose(k2, 0.5 * (np.log(p[x]) - np.log(q[x])) ** 2, rtol=1e-5, atol=1e-7)
    lr = np.log(q[x]) - np.log(p[x])
    np.testing.assert_allclose(k3, np.exp(lr) - 1 - lr, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        kl_lib.kl_estimate(logp, logq, "k4")


@pytest.mark.parametrize("kl", [0.0, 5.0, 6.0, 6.6, 100.0])
def test_adaptive_kl(kl):
    s = kl_lib.init_kl_state(0.1)
    new = jax.jit(kl_lib.update_adaptive_kl, static_argnames=("target", "horizon"))(
        s, jnp.float32(kl), 64, target=6.0, horizon=10000)
    err = np.clip(kl / 6.0 - 1, -0.2, 0.2)
    np.testing.assert_allclose(new["beta"], 0.1 * (1 + err * 64 / 10000), rtol=1e-6)


def test_shaped_rewards_placement():
    rng = np.random.default_rng(3)
    B, T = 4, 8
    eos = 1
    tokens = rng.integers(2, 10, size=(B, T))
    tokens[0, 3] = eos; tokens[1, 0] = eos; tokens[2, 7] = eos; tokens[3, 5] = eos; tokens[3, 6] = eos
    # 1 up to and including the first EOS, 0 after
    first_eos = np.where((tokens == eos).any(-1), (tokens == eos).argmax(-1), T - 1)
    mask = (np.arange(T)[None] <= first_eos[:, None]).astype(np.int32)
    np.testing.assert_array_equal(mask.sum(-1), [4, 1, 8, 6])
    scores = rng.normal(size=B).astype(np.float32)
    logp = rng.normal(size=(B, T)).astype(np.float32)
    ref = rng.normal(size=(B, T)).astype(np.float32)
    beta = 0.05
    r, ns = jax.jit(rw.shaped_rewards)(scores, logp, ref, mask, beta)
    ns_ref = -beta * (logp - ref) * mask
    np.testing.assert_allclose(ns, ns_ref, rtol=1e-5, atol=1e-7)
    r_ref = ns_ref.copy()
    for b in range(B):
        r_ref[b, mask[b].sum() - 1] += scores[b]
    np.testing.assert_allclose(r, r_ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(r)[mask == 0] == 0)


def test_missing_eos_penalty():
    out = rw.apply_missing_eos_penalty(jnp.array([0.5, 2.0]), jnp.array([True, False]), -1.0)
    np.testing.assert_allclose(out, [0.5, -1.0])


def test_truncate_after_token():
    tokens = jnp.array([[9, 3, 9, 4, 9, 5], [1, 2, 3, 4, 5, 6], [9, 9, 1, 1, 1, 1]])
    mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = rw.truncate_after_token(tokens, mask, 9, 2)
    np.testing.assert_array_equal(out, [[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0]])


def _ppo_settings(**changes):
    import dataclasses
    from jaxrlhf.config import base_config
    from jaxrlhf.settings import RunSettings
    return dataclasses.replace(RunSettings.from_config(base_config()).ppo, **changes)


def _term_inputs(rng, B=3, T=5, V=7):
    from jaxrlhf.rl.objectives import TermInputs
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, size=B)[:, None]).astype(np.float32)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    rollout = {"logprobs": f(B, T) - 2, "advantages": f(B, T), "values": f(B, T),
               "returns": f(B, T), "ref_logprobs": f(B, T) - 2}
    return TermInputs(logprobs=f(B, T) - 2, entropies=np.abs(f(B, T)), values=f(B, T), rollout=rollout,
                      mask=mask)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_term(est):
    from jaxrlhf.rl.objectives import kl_term
    x = _term_inputs(np.random.default_rng(6))
    loss, met = jax.jit(kl_term, static_argnums=1)(x, _ppo_settings(kl_estimator=est))
    d = x.logprobs - x.rollout["ref_logprobs"]
    per = {"k1": d, "k2": 0.5 * d ** 2, "k3": np.exp(-d) - 1 + d}[est]
    np.testing.assert_allclose(loss, (per * x.mask).sum() / x.mask.sum(), rtol=1e-4)
    assert met["loss/kl"] == loss


def test_kl_loss_term_refuses_the_k1_estimator():
    from jaxrlhf.errors import ConfigError
    with pytest.raises(ConfigError, match="ppo.kl_estimator='k1' has no KL gradient"):
        _ppo_settings(kl_in_reward=False, kl_estimator="k1")
    _ppo_settings(kl_in_reward=False, kl_estimator="k2")


@pytest.mark.parametrize("changes, names", [
    ({}, ["policy", "value"]),
    ({"ent_coef": 0.01, "kl_in_reward": False, "kl_estimator": "k3"},
     ["policy", "value", "entropy", "kl"]),
])
def test_objective_is_the_weighted_sum_of_its_terms(changes, names):
    from jaxrlhf import policy_losses
    from jaxrlhf.rl.objectives import combine, objective_terms
    s = _ppo_settings(**changes)
    terms = objective_terms(s, kl_coef=0.3)
    assert [name for _, name in terms] == names
    x = _term_inputs(np.random.default_rng(7))
    total, metrics = combine(terms, x, s)
    pg = policy_losses.ppo_policy_loss(x.logprobs, x.rollout["logprobs"], x.rollout["advantages"],
                                x.mask, clip=s.clip_low)[0]
    vf = policy_losses.value_loss(x.values, x.rollout["values"], x.rollout["returns"], x.mask,
                           clip=s.value_clip)[0]
    expected = pg + s.vf_coef * vf
    if "entropy" in names:
        expected = expected - s.ent_coef * metrics["policy/entropy"]
        expected = expected + 0.3 * metrics["loss/kl"]
        assert metrics["policy/entropy"] > 0 and metrics["loss/kl"] != 0
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert metrics["loss/total"] == total


# ---- critic-free advantage estimators against numpy loops -----------------------------

def _grouped_rollout(seed, prompts=3, group=4, T=7):
    rng = np.random.default_rng(seed)
    lengths, mask = _padded(rng, B=prompts * group, T=T)
    rewards = (rng.normal(size=mask.shape) * mask).astype(np.float32)  # 0 on padding
    rewards[:, :] += np.where(mask == 0, rng.normal(size=mask.shape), 0)  # garbage on padding
    return rewards.astype(np.float32), mask, lengths


def _np_sequence_rewards(rewards, lengths):
    return np.array([rewards[b, :lengths[b]].sum() for b in range(len(lengths))], np.float64)


def _options(group, scale=True, gamma=1.0):
    return adv_lib.AdvantageOptions(gamma=gamma, lam=0.95, group_size=group, scale_rewards=scale)


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_advantages_match_loop(scale):
    group = 4
    rewards, mask, lengths = _grouped_rollout(20, group=group)
    adv, _ = jax.jit(adv_lib.ESTIMATORS["grpo"].advantages, static_argnums=3)(
        rewards, np.zeros_like(rewards), mask, _options(group, scale))
    seq = _np_sequence_rewards(rewards, lengths)
    expected = np.zeros(rewards.shape)
    for start in range(0, len(seq), group):
        g = seq[start:start + group]
        for i in range(group):
            a = g[i] - g.mean()
            if scale:   # Shao et al. 2024: (r - mean) / std, std unbiased as in TRL
                a /= np.sqrt(((g - g.mean()) ** 2).sum() / (group - 1)) + 1e-4
            expected[start + i, :lengths[start + i]] = a
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)


def test_rloo_advantages_match_loop():
    group = 3
    rewards, mask, lengths = _grouped_rollout(21, prompts=4, group=group)
    adv, _ = adv_lib.ESTIMATORS["rloo"].advantages(rewards, np.zeros_like(rewards), mask,
                                                   _options(group))
    seq = _np_sequence_rewards(rewards, lengths)
    expected = np.zeros(rewards.shape)
    for b in range(len(seq)):
        start = b // group * group
        others = [seq[j] for j in range(start, start + group) if j != b]
        expected[b, :lengths[b]] = seq[b] - np.mean(others)   # Ahmadian et al. 2024
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_is_the_return_to_go(gamma):
    rewards, mask, lengths = _grouped_rollout(22, prompts=5, group=1)
    adv, _ = adv_lib.ESTIMATORS["reinforce"].advantages(rewards, np.ones_like(rewards), mask,
                                                        _options(1, gamma=gamma))
    expected = np.zeros(rewards.shape)
    for b, n in enumerate(lengths):
        for t in range(n):
            expected[b, t] = sum(gamma ** (k - t) * rewards[b, k] for k in range(t, n))
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_a_group_with_equal_rewards_gets_zero_advantage(name):
    group = 4
    rewards, mask, lengths = _grouped_rollout(23, prompts=2, group=group)
    # the first prompt's responses all earn 0.7 in total, however long they are
    for b in range(group):
        rewards[b, :lengths[b]] = 0.7 / lengths[b]
    adv, _ = adv_lib.ESTIMATORS[name].advantages(rewards, np.zeros_like(rewards), mask,
                                                 _options(group))
    np.testing.assert_allclose(np.asarray(adv)[:group], 0.0, atol=1e-5)
    assert np.abs(np.asarray(adv)[group:]).max() > 0.1


def test_gae_estimator_is_gae():
    rng = np.random.default_rng(24)
    lengths, mask = _padded(rng)
    r = rng.normal(size=mask.shape).astype(np.float32)
    v = rng.normal(size=mask.shape).astype(np.float32)
    adv, ret = adv_lib.ESTIMATORS["gae"].advantages(r, v, mask, _options(1))
    adv_np, ret_np = _np_gae(r, v, lengths, 1.0, 0.95)
    np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)
    assert [n for n, e in adv_lib.ESTIMATORS.items() if e.needs_values] == ["gae"]


def test_critic_free_objective_has_no_value_term():
    from jaxrlhf.rl.objectives import objective_terms
    s = _ppo_settings(advantage="grpo", num_generations=4, kl_in_reward=False,
                      kl_estimator="k3")
    assert [name for _, name in objective_terms(s, kl_coef=0.1)] == ["policy", "kl"]
    assert not s.uses_value_model and not s.shared_trunk
    with pytest.raises(ValueError, match="num_generations=1 must be >= 2"):
        _ppo_settings(advantage="rloo")
    with pytest.raises(ValueError, match="train.batch_size=64 must be divisible by "
                                         "ppo.num_generations=5"):
        _ppo_settings(advantage="rloo", num_generations=5).check_batch(64)
