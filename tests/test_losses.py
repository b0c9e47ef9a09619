"""jaxrlhf.losses against independent numpy references."""
import jax
import numpy as np
import pytest

from jaxrlhf import losses, policy_losses
from jaxrlhf.scoring import token_entropies, token_log_probs


def _sig(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("use_margin", [False, True])
def test_bradley_terry(use_margin):
    rng = np.random.default_rng(0)
    B = 7
    rc, rr = rng.normal(size=B).astype(np.float32), rng.normal(size=B).astype(np.float32)
    m = rng.uniform(0, 1, size=B).astype(np.float32) if use_margin else None
    d = rc - rr - (m if use_margin else 0)
    loss, met = jax.jit(losses.bradley_terry)(rc, rr, m)
    np.testing.assert_allclose(loss, np.mean(-np.log(_sig(d))), rtol=1e-5)
    np.testing.assert_allclose(met["rm/accuracy"], np.mean(rc > rr))
    np.testing.assert_allclose(met["rm/chosen"], rc.mean(), rtol=1e-5)
    np.testing.assert_allclose(met["rm/rejected"], rr.mean(), rtol=1e-5)
    np.testing.assert_allclose(met["rm/margin"], (rc - rr).mean(), rtol=1e-4, atol=1e-6)
    gc, gr = jax.grad(lambda a, b: losses.bradley_terry(a, b, m)[0], argnums=(0, 1))(rc, rr)
    np.testing.assert_allclose(gc, -(1 - _sig(d)) / B, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gr, (1 - _sig(d)) / B, rtol=1e-5, atol=1e-7)


def test_reward_centering():
    rng = np.random.default_rng(1)
    rc, rr = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    loss, _ = losses.reward_centering(rc, rr, 0.01)
    np.testing.assert_allclose(loss, 0.01 * np.mean((rc + rr) ** 2), rtol=1e-5)
    g = jax.grad(lambda a: losses.reward_centering(a, rr, 0.01)[0])(rc)
    np.testing.assert_allclose(g, 0.01 * 2 * (rc + rr) / 5, rtol=1e-5)


def _mask(rng, B, T):
    lengths = rng.integers(1, T + 1, size=B)
    return (np.arange(T)[None] < lengths[:, None]).astype(np.float32)


def test_ppo_policy_loss():
    rng = np.random.default_rng(2)
    B, T = 4, 6
    mask = _mask(rng, B, T)
    old = rng.normal(-2, 1, size=(B, T)).astype(np.float32)
    logp = (old + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    loss, met = jax.jit(policy_losses.ppo_policy_loss)(logp, old, adv, mask)
    ratio = np.exp(logp - old)
    pg1, pg2 = -adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)
    mm = lambda x: (x * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, mm(np.maximum(pg1, pg2)), rtol=1e-5)
    np.testing.assert_allclose(met["policy/clipfrac"], mm(pg2 > pg1), rtol=1e-6)
    np.testing.assert_allclose(met["val/ratio"], mm(ratio), rtol=1e-5)
    np.testing.assert_allclose(met["policy/approxkl"], 0.5 * mm((logp - old) ** 2), rtol=1e-5)
    assert 0 < float(met["policy/clipfrac"]) < 1
    # gradient vanishes where clipped, and on padding
    g = np.asarray(jax.grad(lambda l: policy_losses.ppo_policy_loss(l, old, adv, mask)[0])(logp))
    assert np.all(g[mask == 0] == 0)
    assert np.all(g[(pg2 > pg1) & (mask == 1)] == 0)


def test_value_loss():
    rng = np.random.default_rng(3)
    B, T = 4, 6
    mask = _mask(rng, B, T)
    old = rng.normal(size=(B, T)).astype(np.float32)
    v = (old + rng.normal(0, 0.4, size=(B, T))).astype(np.float32)
    ret = rng.normal(size=(B, T)).astype(np.float32)
    loss, met = jax.jit(policy_losses.value_loss)(v, old, ret, mask)
    vc = old + np.clip(v - old, -0.2, 0.2)
    vf1, vf2 = (v - ret) ** 2, (vc - ret) ** 2
    mm = lambda x: (x * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, 0.5 * mm(np.maximum(vf1, vf2)), rtol=1e-5)
    np.testing.assert_allclose(met["val/clipfrac"], mm(vf2 > vf1), rtol=1e-6)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_entropy():
    rng = np.random.default_rng(4)
    B, T, V = 3, 5, 11
    mask = _mask(rng, B, T)
    logits = rng.normal(0, 2, size=(B, T, V)).astype(np.float32)
    ent, met = jax.jit(lambda x, m: policy_losses.entropy_bonus(token_entropies(x), m))(logits, mask)
    lp = _np_log_softmax(logits.astype(np.float64))
    h = -(np.exp(lp) * lp).sum(-1)
    np.testing.assert_allclose(ent, (h * mask).sum() / mask.sum(), rtol=1e-5)
    assert met["policy/entropy"] == ent


def test_sft_nll():
    rng = np.random.default_rng(5)
    B, T, V = 3, 5, 11
    mask = _mask(rng, B, T)
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    tgt = rng.integers(0, V, size=(B, T))
    loss, met = jax.jit(lambda x, t, m: losses.sft_nll(token_log_probs(x, t), m))(logits, tgt, mask)
    lp = _np_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, (nll * mask).sum() / mask.sum(), rtol=1e-5)
    assert met["tokens"] == mask.sum()


# ---- DPO family: each loss against its paper's formula in numpy ------------------------

def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _pairs(seed, n=9):
    rng = np.random.default_rng(seed)
    f = lambda: rng.normal(-20, 4, size=n)  # noqa: E731  (sequence log-probs, nats)
    tokens = lambda: rng.integers(1, 25, size=n).astype(np.float64)  # noqa: E731
    return losses.PreferenceLogProbs(*(x.astype(np.float32) for x in
                                       (f(), f(), f(), f(), tokens(), tokens())))


def _np_metrics(reward_c, reward_r, x):
    return {"rewards/chosen": reward_c.mean(), "rewards/rejected": reward_r.mean(),
            "rewards/accuracies": (reward_c > reward_r).mean(),
            "rewards/margins": (reward_c - reward_r).mean(),
            "logps/chosen": np.mean(x.chosen), "logps/rejected": np.mean(x.rejected)}


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_and_conservative_dpo(beta, eps):
    x = _pairs(10)
    c, r, rc, rr = (np.asarray(v, np.float64) for v in x[:4])
    h = (c - rc) - (r - rr)                       # Rafailov et al. 2023, eq. 7
    expected = np.mean(-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h))
    loss, met = jax.jit(losses.dpo_loss)(x, beta, eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    for key, value in _np_metrics(beta * (c - rc), beta * (r - rr), x).items():
        np.testing.assert_allclose(met[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    # d loss / d log pi(y_w) = -beta [(1 - eps) sigmoid(-beta h) - eps sigmoid(beta h)] / n
    g = jax.grad(lambda x: losses.dpo_loss(x, beta, eps)[0])(x)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    dc = -beta * ((1 - eps) * sig(-beta * h) - eps * sig(beta * h)) / len(h)
    np.testing.assert_allclose(g.chosen, dc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g.rejected, -dc, rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(g.ref_chosen) == 0)  # the reference gets no gradient


def test_ipo():
    x, tau = _pairs(11), 0.25
    c, r, rc, rr = (np.asarray(v, np.float64) for v in x[:4])
    h = (c - rc) - (r - rr)                       # Azar et al. 2023, eq. 17
    loss, met = jax.jit(losses.ipo_loss)(x, tau)
    np.testing.assert_allclose(loss, np.mean((h - 1 / (2 * tau)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(met["rewards/margins"], np.mean(tau * h), rtol=1e-4)


def test_simpo():
    x, beta, gamma = _pairs(12), 2.0, 0.5
    c, r, nc, nr = (np.asarray(v, np.float64) for v in (x.chosen, x.rejected,
                                                         x.chosen_tokens, x.rejected_tokens))
    reward_c, reward_r = beta * c / nc, beta * r / nr        # Meng et al. 2024, eq. 4 and 6
    loss, met = jax.jit(losses.simpo_loss)(x, beta, gamma)
    np.testing.assert_allclose(loss, np.mean(-_log_sigmoid(reward_c - reward_r - gamma)),
                               rtol=1e-5)
    for key, value in _np_metrics(reward_c, reward_r, x).items():
        np.testing.assert_allclose(met[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    g = jax.grad(lambda x: losses.simpo_loss(x, beta, gamma)[0])(x)
    assert np.all(np.asarray(g.ref_chosen) == 0) and np.all(np.asarray(g.ref_rejected) == 0)


def test_orpo():
    """Hong et al. 2024, eqs. 2-7, on length-normalised log-probs (mean per token)."""
    x, lam = _pairs(15), 0.25
    c, r, nc, nr = (np.asarray(v, np.float64) for v in (x.chosen, x.rejected,
                                                         x.chosen_tokens, x.rejected_tokens))
    p_c, p_r = np.exp(c / nc), np.exp(r / nr)                       # P(y|x), eq. 4
    log_odds = np.log(p_c / (1 - p_c)) - np.log(p_r / (1 - p_r))    # eq. 7
    expected = np.mean(-np.log(p_c)) + lam * np.mean(-_log_sigmoid(log_odds))   # eq. 6
    loss, met = jax.jit(losses.orpo_loss)(x, lam)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(met["orpo/log_odds_ratio"], log_odds.mean(), rtol=1e-4)
    for key, value in _np_metrics(lam * c / nc, lam * r / nr, x).items():
        np.testing.assert_allclose(met[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    g = jax.grad(lambda x: losses.orpo_loss(x, lam)[0])(x)          # reference-free
    assert np.all(np.asarray(g.ref_chosen) == 0) and np.all(np.asarray(g.ref_rejected) == 0)
    # a one-token response whose probability is near 1 keeps a finite odds (log1m_exp)
    near_one = x._replace(chosen=np.full(len(c), -1e-7, np.float32),
                          chosen_tokens=np.ones(len(c), np.float32))
    assert np.isfinite(losses.orpo_loss(near_one, lam)[0])


def test_every_configured_loss_is_its_formula():
    from types import SimpleNamespace
    x = _pairs(13)
    s = SimpleNamespace(beta=0.3, label_smoothing=0.1, simpo_gamma=0.7)
    expected = {"dpo": losses.dpo_loss(x, 0.3), "cdpo": losses.dpo_loss(x, 0.3, 0.1),
                "ipo": losses.ipo_loss(x, 0.3), "simpo": losses.simpo_loss(x, 0.3, 0.7),
                "orpo": losses.orpo_loss(x, 0.3)}
    assert set(losses.PREFERENCE_LOSSES) == set(expected)
    for name, fn in losses.PREFERENCE_LOSSES.items():
        np.testing.assert_allclose(fn(x, s)[0], expected[name][0], err_msg=name)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "ipo"])
def test_identical_chosen_and_rejected_give_zero_gradient(name):
    """With y_w = y_l the log-ratio difference is 0 whatever the parameters, so the
    gradient vanishes even at a huge beta (through a real model: up to float rounding,
    a millionth of the gradient of a pair whose responses differ)."""
    import types
    from jaxrlhf.models.build import abstract_model, random_params
    from jaxrlhf.models.config import ModelConfig
    from jaxrlhf.models.transformer import CausalLM
    from jaxrlhf.trainers import dpo_program as dpo
    cfg = ModelConfig.preset("gpt2", vocab_size=32, d_model=32, n_layers=1, d_ff=64)
    graphdef, _ = abstract_model(CausalLM, cfg)
    params = random_params(CausalLM, cfg, 0)
    rng = np.random.default_rng(14)
    ids = rng.integers(2, 32, size=(4, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    prompt_length = np.array([3, 4, 2, 5], np.int32)
    ref = dpo.pair_log_probs(graphdef, params, {
        "chosen_ids": ids, "chosen_mask": mask, "rejected_ids": ids, "rejected_mask": mask,
        "prompt_length": prompt_length})[0]
    settings = types.SimpleNamespace(beta=1e4, label_smoothing=0.2 if name == "cdpo" else 0.0,
                                     simpo_gamma=0.0)
    objective = lambda x: losses.PREFERENCE_LOSSES[name](x, settings)  # noqa: E731

    def largest_gradient(rejected_ids):
        batch = {"chosen_ids": ids, "chosen_mask": mask, "rejected_ids": rejected_ids,
                 "rejected_mask": mask, "prompt_length": prompt_length,
                 "ref_chosen_logps": ref, "ref_rejected_logps": ref}
        grads = jax.jit(jax.grad(lambda p: dpo.dpo_loss(graphdef, p, batch,
                                                        objective=objective)[0]))(params)
        return max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))

    different = ids.copy()
    different[:, -3:] = (ids[:, -3:] + 1) % 32
    assert largest_gradient(ids) < 1e-6 * largest_gradient(different)
