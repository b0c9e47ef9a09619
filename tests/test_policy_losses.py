"""Policy losses by name (``ppo.policy_loss``) and loss aggregations (``ppo.loss_agg``)
against numpy implementations of their papers' formulas on ragged masks, and gradient
accumulation invariance of the PPO update's gradient for every aggregation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf import optim, policy_losses
from jaxrlhf.config import base_config
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.settings import RunSettings

AGGREGATIONS = policy_losses.LOSS_AGGREGATIONS


def _inputs(seed, B=5, T=7):
    """Log-probs, old log-probs, per-token advantages and a ragged mask (one empty row)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[-1] = 0
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    old = (rng.normal(size=(B, T)) - 2).astype(np.float32)
    logp = (old + 0.3 * rng.normal(size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    return logp, old, adv, mask, lengths


def _np_aggregate(per_token, mask, mode):
    """numpy: the four aggregations, written as their papers write them."""
    rows = [b for b in range(len(mask)) if mask[b].sum() > 0]
    sums = [(per_token[b] * mask[b]).sum() for b in rows]
    if mode == "token_mean":
        return sum(sums) / mask.sum()
    if mode == "seq_mean_token_mean":
        return np.mean([s / mask[b].sum() for s, b in zip(sums, rows)])
    if mode == "seq_mean_token_sum":
        return np.mean(sums)
    return np.sum(sums) / (len(rows) * mask.shape[1])          # Dr. GRPO: / (G * L_max)


def _aggregated(loss_fn, mask, mode, *args):
    weights = policy_losses.aggregation_weights(jnp.asarray(mask), mode)
    loss, metrics = loss_fn(*args, weights)
    return loss * policy_losses.aggregation_scale(jnp.asarray(mask), mode), metrics


def _np_clipped(ratio, adv, lo, hi):
    return np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - lo, 1 + hi))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregations_match_their_formulas(mode):
    logp, old, adv, mask, _ = _inputs(0)
    per_token = _np_clipped(np.exp(logp - old), adv, 0.2, 0.28)
    got, _ = _aggregated(lambda w: policy_losses.ppo_policy_loss(logp, old, adv, w, 0.2, 0.28), mask,
                         mode)
    np.testing.assert_allclose(got, _np_aggregate(per_token, mask, mode), rtol=1e-5)


def test_clip_higher_clips_each_side_at_its_own_range_and_equal_ranges_are_ppo():
    logp, old, adv, mask, _ = _inputs(1)
    ratio = np.exp(logp - old)
    loss, metrics = policy_losses.ppo_policy_loss(logp, old, adv, mask, 0.1, 0.3)
    per_token = _np_clipped(ratio, adv, 0.1, 0.3)
    np.testing.assert_allclose(loss, (per_token * mask).sum() / mask.sum(), rtol=1e-5)
    clipped = _np_clipped(ratio, adv, 0.1, 0.3) > -adv * ratio
    np.testing.assert_allclose(metrics["policy/clipfrac"], (clipped * mask).sum() / mask.sum(),
                               rtol=1e-5)
    same = policy_losses.ppo_policy_loss(logp, old, adv, mask, 0.2, 0.2)[0]
    np.testing.assert_array_equal(same, policy_losses.ppo_policy_loss(logp, old, adv, mask, clip=0.2)[0])


def _np_gspo(logp, old, adv, mask, lo, hi):
    """numpy GSPO (Zheng et al. 2025, eq. 5): 1/G sum_i max(-A_i s_i, -A_i clip(s_i))."""
    out = []
    for b in range(len(mask)):
        n = mask[b].sum()
        if n == 0:
            continue
        s = np.exp(((logp[b] - old[b]) * mask[b]).sum() / n)
        a = (adv[b] * mask[b]).sum() / n
        out.append(max(-a * s, -a * np.clip(s, 1 - lo, 1 + hi)))
    return np.mean(out)


@pytest.mark.parametrize("token_level", [False, True])
def test_gspo_is_the_clipped_length_normalised_sequence_ratio(token_level):
    logp, old, adv, mask, _ = _inputs(2)
    seq_adv = np.broadcast_to((adv * mask).sum(-1, keepdims=True)
                              / np.maximum(mask.sum(-1, keepdims=True), 1), adv.shape)
    # GSPO-token with the sequence's advantage on every token has GSPO's value
    used_adv = seq_adv if token_level else adv
    fn = lambda w: policy_losses.gspo_policy_loss(logp, old, used_adv, w, 0.05, 0.08,  # noqa: E731
                                           token_level=token_level)
    got, _ = _aggregated(fn, mask, "seq_mean_token_mean")
    np.testing.assert_allclose(got, _np_gspo(logp, old, adv, mask, 0.05, 0.08), rtol=1e-5)


def test_gspo_with_one_token_per_sequence_is_ppo():
    logp, old, adv, _, _ = _inputs(3, T=1)
    mask = np.ones_like(logp)
    for name in ("gspo", "gspo_token"):
        got = policy_losses.POLICY_LOSSES[name](logp, old, adv, mask, 0.2, 0.25)[0]
        np.testing.assert_allclose(got, policy_losses.ppo_policy_loss(logp, old, adv, mask, 0.2, 0.25)[0],
                                   rtol=1e-6)


def test_gspo_token_gives_each_token_its_own_advantage():
    """d/d logp_t of GSPO-token = -A_t * sg[s_i] / |y_i| (unclipped), per token."""
    logp, old, adv, mask, _ = _inputs(4)
    weights = policy_losses.aggregation_weights(jnp.asarray(mask), "seq_mean_token_mean")
    grad = jax.grad(lambda lp: policy_losses.gspo_policy_loss(lp, old, adv, weights, 10.0, 10.0,
                                                       token_level=True)[0])(jnp.asarray(logp))
    n = np.maximum(mask.sum(-1, keepdims=True), 1)
    s = np.exp(((logp - old) * mask).sum(-1, keepdims=True) / n)
    rows = (mask.sum(-1) > 0).sum()
    np.testing.assert_allclose(grad, -adv * s * mask / n / rows, rtol=1e-4, atol=1e-7)


def test_cispo_gradient_is_the_clipped_weight_times_grad_log_prob():
    logp, old, adv, mask, _ = _inputs(5)
    lo, hi = 0.1, 0.2
    loss_fn = lambda lp: policy_losses.cispo_policy_loss(lp, old, adv, mask, lo, hi)[0]  # noqa: E731
    grad = jax.grad(loss_fn)(jnp.asarray(logp))
    weight = np.clip(np.exp(logp - old), 1 - lo, 1 + hi)
    np.testing.assert_allclose(grad, -weight * adv * mask / mask.sum(), rtol=1e-5, atol=1e-8)
    # every token keeps its gradient, clipped or not (PPO's clip zeroes the clipped ones)
    ppo_grad = jax.grad(lambda lp: policy_losses.ppo_policy_loss(lp, old, adv, mask, lo, hi)[0])(
        jnp.asarray(logp))
    assert (np.abs(np.asarray(grad))[mask > 0] > 0).all()
    assert (np.asarray(ppo_grad)[mask > 0] == 0).any()


def test_the_settings_name_every_policy_loss_and_aggregation():
    from jaxrlhf.errors import ConfigError
    ppo = RunSettings.from_config(base_config()).ppo
    assert (ppo.policy_loss, ppo.loss_agg, ppo.clip_low, ppo.clip_high) == (
        "ppo", "token_mean", 0.2, 0.2)
    for name in policy_losses.POLICY_LOSSES:
        dataclasses.replace(ppo, policy_loss=name)
    with pytest.raises(ConfigError, match="ppo.loss_agg"):
        dataclasses.replace(ppo, loss_agg="sum")


# ---- gradient accumulation: the PPO update's gradient for 1 and 4 micro-batches ---------
def _ppo_gradient(settings, models, params, data, num_micro):
    from jaxrlhf.rl.ppo import Frozen, aggregate, ppo_loss

    def loss_fn(p, batch):
        return ppo_loss(p, batch, models=models, settings=settings, temperature=1.0,
                        kl_coef=jnp.float32(0.05), frozen=Frozen(ref=None, reward=None))
    grads, metrics, _ = optim.accumulated_gradients(loss_fn, params, data, num_micro)
    return aggregate(grads, metrics, data["mask"], settings.loss_agg)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_gradient_accumulation_gives_the_one_batch_gradient(mode):
    from test_memory import _assert_trees_close, _ppo_inputs
    cfg = ModelConfig.preset("gpt2", vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                             n_kv_heads=2, d_ff=64, max_seq_len=32)
    models, params, data = _ppo_inputs(cfg, np.random.default_rng(0), batch=8, response=6)
    policy_loss = {"token_mean": "ppo", "seq_mean_token_mean": "gspo",
                   "seq_mean_token_sum": "cispo", "seq_mean_token_sum_norm": "ppo"}[mode]
    settings = dataclasses.replace(RunSettings.from_config(base_config()).ppo, loss_agg=mode,
                                   policy_loss=policy_loss, clip_high=0.28, ent_coef=0.01)
    _assert_trees_close(_ppo_gradient(settings, models, params, data, 4),
                        _ppo_gradient(settings, models, params, data, 1))


# ---- DAPO's length terms -----------------------------------------------------------------
def test_overlong_penalty_is_dapos_soft_punishment():
    from jaxrlhf.rl.rewards import overlong_penalty
    lengths = jnp.array([0, 12, 13, 14, 16, 20])       # L_max = 20, L_cache = 8: ramp from 12
    got = overlong_penalty(lengths, max_length=20, buffer=8, factor=0.5)
    want = [0.0, 0.0, -0.5 / 8, -0.5 * 2 / 8, -0.5 * 4 / 8, -0.5]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_responses_left_out_of_the_loss_give_no_gradient():
    """``loss_mask`` (``ppo.mask_truncated``: responses without an EOS) is what the loss
    reads: zeroing rows equals dropping them from the batch."""
    from test_memory import _assert_trees_close, _ppo_inputs
    cfg = ModelConfig.preset("gpt2", vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                             n_kv_heads=2, d_ff=64, max_seq_len=32)
    models, params, data = _ppo_inputs(cfg, np.random.default_rng(1), batch=8, response=6)
    settings = RunSettings.from_config(base_config()).ppo
    kept = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    masked = {**data, "loss_mask": data["mask"] * jnp.asarray(kept, jnp.int32)[:, None]}
    subset = {k: v[np.flatnonzero(kept)] for k, v in data.items()}
    _assert_trees_close(_ppo_gradient(settings, models, params, masked, 1),
                        _ppo_gradient(settings, models, params, subset, 1))
