"""Sampling: KV-cache decoding against full recomputation, top-k / top-p, EOS masking."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf import sampling
from jaxrlhf.data.tokenizer import left_pad
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.scoring import positions_from_mask

EOS, PAD = 1, 0


def _model(family="gpt2", vocab=17):
    cfg = ModelConfig.preset(family, vocab_size=vocab, d_model=32, n_layers=2, n_heads=4,
                             n_kv_heads=2 if family == "llama" else 4, d_ff=64, max_seq_len=32)
    return nnx.split(CausalLM(cfg, rngs=nnx.Rngs(0)))


def _prompts():
    ids, mask = left_pad([[3, 4, 2, 3], [4, 2], [3]], PAD, length=5)
    return jnp.asarray(ids), jnp.asarray(mask)


def _reference_generate(graphdef, params, ids, mask, rng, n, **kw):
    """Recompute the full forward pass at every step, with the sampler's keys."""
    model = nnx.merge(graphdef, params)
    keys = jax.random.split(rng, n)
    seq, seq_mask = ids, mask
    done = jnp.zeros(ids.shape[0], bool)
    tokens, valid, logps = [], [], []
    for t in range(n):
        logits, _ = model(seq, positions_from_mask(seq_mask), seq_mask)
        token, logp = sampling.sample_token(logits[:, -1], keys[t], **kw)
        token = jnp.where(done, PAD, token)
        valid.append(~done)
        logps.append(jnp.where(done, 0.0, logp))
        done = done | (token == EOS)
        tokens.append(token)
        seq = jnp.concatenate([seq, token[:, None]], 1)
        seq_mask = jnp.concatenate([seq_mask, jnp.ones_like(token)[:, None]], 1)
    return jnp.stack(tokens, 1), jnp.stack(valid, 1).astype(jnp.int32), jnp.stack(logps, 1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=0, top_p=1.0, greedy=False),
                                dict(temperature=1.3, top_k=5, top_p=0.9, greedy=False),
                                dict(temperature=1.0, top_k=0, top_p=1.0, greedy=True)])
def test_kv_cache_sampling_matches_full_recompute(family, kw):
    graphdef, params = _model(family)
    ids, mask = _prompts()
    rng = jax.random.key(3)
    out = jax.jit(functools.partial(sampling.generate, graphdef, max_new_tokens=10,
                                    eos_id=EOS, pad_id=PAD, **kw))(params, ids, mask, rng)
    tokens, valid, logps = _reference_generate(graphdef, params, ids, mask, rng, 10, **kw)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.mask, valid)
    np.testing.assert_allclose(out.logprobs, logps, atol=1e-5)


def test_nothing_after_eos_leaks():
    graphdef, params = _model(vocab=5)  # a tiny vocabulary makes EOS frequent
    ids, mask = _prompts()
    out = sampling.generate(graphdef, params, ids, mask, jax.random.key(0), max_new_tokens=24,
                            eos_id=EOS, pad_id=PAD, temperature=1.0)
    tokens, m, lp = map(np.asarray, out)
    assert (tokens == EOS).any()
    for row in range(tokens.shape[0]):
        eos_at = np.flatnonzero(tokens[row] == EOS)
        if len(eos_at):
            first = eos_at[0]
            assert m[row, : first + 1].all() and not m[row, first + 1:].any()
            assert (tokens[row, first + 1:] == PAD).all() and (lp[row, first + 1:] == 0).all()
        else:
            assert m[row].all()


def test_top_k_mask_against_numpy():
    logits = jax.random.normal(jax.random.key(0), (4, 11))
    kept = np.asarray(sampling.top_k_mask(logits, 3)) > sampling.NEG_INF / 2
    expected = np.zeros_like(kept)
    for r, row in enumerate(np.asarray(logits)):
        expected[r, np.argsort(-row)[:3]] = True
    np.testing.assert_array_equal(kept, expected)


def test_top_p_mask_against_numpy():
    logits = jax.random.normal(jax.random.key(1), (4, 11)) * 2
    for p in (0.3, 0.75, 0.95):
        kept = np.asarray(sampling.top_p_mask(logits, p)) > sampling.NEG_INF / 2
        for r, row in enumerate(np.asarray(logits, np.float64)):
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            order = np.argsort(-probs)
            # smallest prefix of the sorted tokens whose mass reaches p
            size = int(np.searchsorted(np.cumsum(probs[order]), p) + 1)
            expected = np.zeros(len(row), bool)
            expected[order[:size]] = True
            np.testing.assert_array_equal(kept[r], expected)


def test_positions_from_left_padded_mask():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_mask(mask),
                                  [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])


def test_generation_runs_under_every_remat_policy():
    """remat applies to training passes only: decoding with a policy set samples the same
    tokens as without (it once failed inside the decode loop), in either layer layout."""
    ids, mask = _prompts()

    def greedy(remat, scan):
        cfg = ModelConfig.preset("llama", vocab_size=17, d_model=32, n_layers=2, n_heads=4,
                                 n_kv_heads=2, d_ff=64, max_seq_len=32, remat=remat,
                                 scan_layers=scan)
        graphdef, params = nnx.split(CausalLM(cfg, rngs=nnx.Rngs(0)))
        out = jax.jit(functools.partial(sampling.generate, graphdef, max_new_tokens=4,
                                        eos_id=EOS, pad_id=PAD, greedy=True))(
            params, ids, mask, jax.random.key(0))
        return np.asarray(out.tokens)

    np.testing.assert_array_equal(greedy("full", False), greedy("none", False))
    assert greedy("dots_saveable", True).shape == (3, 4)
