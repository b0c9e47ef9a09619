"""Best-of-n sampling: pick the best of n samples by a score; its KL from the sampling
policy; and the unbiased estimate of what best-of-n achieves, for every n at once, from
one pool of samples.

Best-of-n draws n responses from a policy and keeps the one the reward model scores
highest. Its KL from the sampling policy is reported as ``log n - (n - 1) / n``
(Stiennon et al. 2020, App. G.3; Gao, Schulman & Hilton 2022, §2), which Beirami et al.
(2024) show to be an upper bound on the exact KL.

Given a pool of N >= n samples for a prompt, the expected value of any quantity (gold
reward, proxy score) of the best of n samples drawn without replacement from the pool is
an exact order-statistics average: with the pool sorted by score, the i-th smallest
(1-based) is the best of a uniformly random n-subset with probability
``C(i - 1, n - 1) / C(N, n)``. This is the unbiased estimator of Gao et al. (2022, §2) and
Nakano et al. (2021, WebGPT): one large pool serves every n <= N, with far less variance
than drawing fresh groups.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln


def kl_best_of_n(n: int) -> float:
    """``log n - (n - 1) / n``: KL(best-of-n || policy) in nats (0 for n = 1)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def select_best(scores: np.ndarray) -> np.ndarray:
    """Index of the highest score in each row [prompts, n] -> [prompts]; ties go to the
    earliest sample."""
    return np.argmax(np.asarray(scores), axis=-1)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Per row, the sample indices from worst to best score, ties ranking the earlier
    sample higher (so the last is :func:`select_best`'s pick). [prompts, N] -> [prompts, N]."""
    scores = np.asarray(scores)
    later_first = np.broadcast_to(-np.arange(scores.shape[-1]), scores.shape)
    return np.stack([np.lexsort((tie, row)) for row, tie in zip(scores, later_first)])


def order_statistic_weights(pool: int, n: int) -> np.ndarray:
    """``C(i - 1, n - 1) / C(pool, n)`` for i = 1..pool: the probability that the i-th
    smallest of the pool is the largest of a uniformly random n-subset. [pool], sums to 1."""
    if not 1 <= n <= pool:
        raise ValueError(f"best-of-{n} needs 1 <= n <= the pool size {pool}")
    i = np.arange(1, pool + 1, dtype=np.float64)
    log_weight = (gammaln(i) - gammaln(n) - gammaln(i - n + 1)
                  - (gammaln(pool + 1) - gammaln(n + 1) - gammaln(pool - n + 1)))
    return np.where(i >= n, np.exp(np.where(i >= n, log_weight, 0.0)), 0.0)


def expected_best_of_n(scores: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Unbiased estimate, per prompt, of E[value of the best-by-``scores`` of n samples]
    from pools ``scores``, ``values`` [prompts, N] (n drawn without replacement).
    -> [prompts]."""
    scores, values = np.asarray(scores), np.asarray(values, np.float64)
    order = rank_order(scores)
    ranked = np.take_along_axis(values, order, axis=-1)              # [prompts, N], worst first
    return ranked @ order_statistic_weights(scores.shape[-1], n)
