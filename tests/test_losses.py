"""jaxrlhf.losses against independent numpy references."""
import jax
import numpy as np
import pytest

from jaxrlhf import losses
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
    loss, met = jax.jit(losses.ppo_policy_loss)(logp, old, adv, mask)
    ratio = np.exp(logp - old)
    pg1, pg2 = -adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)
    mm = lambda x: (x * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, mm(np.maximum(pg1, pg2)), rtol=1e-5)
    np.testing.assert_allclose(met["policy/clipfrac"], mm(pg2 > pg1), rtol=1e-6)
    np.testing.assert_allclose(met["val/ratio"], mm(ratio), rtol=1e-5)
    np.testing.assert_allclose(met["policy/approxkl"], 0.5 * mm((logp - old) ** 2), rtol=1e-5)
    assert 0 < float(met["policy/clipfrac"]) < 1
    # gradient vanishes where clipped, and on padding
    g = np.asarray(jax.grad(lambda l: losses.ppo_policy_loss(l, old, adv, mask)[0])(logp))
    assert np.all(g[mask == 0] == 0)
    assert np.all(g[(pg2 > pg1) & (mask == 1)] == 0)


def test_value_loss():
    rng = np.random.default_rng(3)
    B, T = 4, 6
    mask = _mask(rng, B, T)
    old = rng.normal(size=(B, T)).astype(np.float32)
    v = (old + rng.normal(0, 0.4, size=(B, T))).astype(np.float32)
    ret = rng.normal(size=(B, T)).astype(np.float32)
    loss, met = jax.jit(losses.value_loss)(v, old, ret, mask)
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
    ent, met = jax.jit(lambda x, m: losses.entropy_bonus(token_entropies(x), m))(logits, mask)
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
