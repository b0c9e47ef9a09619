"""Best-of-n: selection, KL_bon, and the unbiased expected-best-of-n estimator against
brute-force enumeration of every subset of a small pool."""
import itertools
import math

import numpy as np
import pytest

from jaxrlhf.rl import best_of_n


def test_selected_response_has_the_maximal_score():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 16))
    scores[3, [2, 9]] = 5.0                      # a tie: the earlier sample wins
    best = best_of_n.select_best(scores)
    assert np.all(scores[np.arange(50), best] == scores.max(-1))
    assert best[3] == 2


@pytest.mark.parametrize("n", [1, 2, 3, 16, 256, 10_000])
def test_kl_best_of_n_formula(n):
    assert best_of_n.kl_best_of_n(n) == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
    assert best_of_n.kl_best_of_n(n) <= math.log(n)    # never more than log n
    with pytest.raises(ValueError):
        best_of_n.kl_best_of_n(0)


def test_kl_best_of_n_is_exact_on_a_continuous_score():
    """Where the score has no ties, best-of-n of a uniform law on [0, 1] is the law with
    density n u^(n-1), whose KL from uniform is log n - (n - 1)/n exactly."""
    for n in (2, 5, 40):
        u = np.linspace(0, 1, 200_001)[1:]
        density = n * u ** (n - 1)
        kl = np.trapezoid(density * np.log(density), u)
        assert kl == pytest.approx(best_of_n.kl_best_of_n(n), abs=1e-4)


def _brute_force(scores, values, n):
    """Mean over every n-subset of the pool of the value of its best-scored member (ties:
    the earliest sample, as select_best)."""
    out = []
    for s, v in zip(scores, values):
        picks = [v[list(c)[best_of_n.select_best(s[list(c)][None])[0]]]
                 for c in itertools.combinations(range(len(s)), n)]
        out.append(np.mean(picks))
    return np.array(out)


@pytest.mark.parametrize("ties", [False, True])
def test_expected_best_of_n_equals_subset_enumeration(ties):
    rng = np.random.default_rng(1)
    pool = 9
    scores = rng.normal(size=(4, pool))
    if ties:
        scores = np.round(scores * 2) / 2          # many equal scores
    values = rng.normal(size=(4, pool))
    for n in range(1, pool + 1):
        np.testing.assert_allclose(best_of_n.expected_best_of_n(scores, values, n),
                                   _brute_force(scores, values, n), rtol=1e-10, atol=1e-12,
                                   err_msg=f"n={n}")
    # n = 1 is the pool mean; n = N the value of the pool's best
    np.testing.assert_allclose(best_of_n.expected_best_of_n(scores, values, 1), values.mean(-1))
    np.testing.assert_allclose(best_of_n.expected_best_of_n(scores, values, pool),
                               values[np.arange(4), best_of_n.select_best(scores)])


def test_weights_are_a_distribution_even_for_large_pools():
    for pool, n in ((2048, 1), (2048, 256), (4096, 4096)):
        w = best_of_n.order_statistic_weights(pool, n)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        assert w.sum() == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="pool size"):
        best_of_n.order_statistic_weights(8, 9)


def test_estimator_agrees_with_fresh_draws():
    """The one-pool estimate agrees with the Monte-Carlo mean of fresh groups of n."""
    rng = np.random.default_rng(2)
    draw = lambda *shape: rng.normal(size=shape)  # noqa: E731
    pool = draw(1, 4000)
    estimate = best_of_n.expected_best_of_n(pool, pool, 8)[0]
    fresh = draw(200_000, 8).max(-1)
    assert estimate == pytest.approx(fresh.mean(), abs=4 * fresh.std() / math.sqrt(4000 / 8))
