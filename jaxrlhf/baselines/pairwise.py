"""Pairwise (Bradley-Terry) logistic regression on bag-of-words feature differences.

Bradley & Terry (Biometrika 1952) with a linear score ``r(x) = w . f(x)``:
``P(a preferred to b) = sigmoid(r(a) - r(b)) = sigmoid(w . (f(a) - f(b)))``: the reward-model
likelihood of Ouyang et al. (2022, "Training language models to follow instructions with
human feedback", Eq. 1) with a bag-of-words score in place of the network. A baseline for
the reward model on Anthropic's HH-RLHF pairs (Bai et al. 2022), ``experiments/hh_baselines``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from jaxrlhf.baselines.bow import BowVocabulary
from jaxrlhf.baselines.logistic import LogisticRegression


def pairwise_features(vocab: BowVocabulary, chosen_texts: Sequence[str],
                      rejected_texts: Sequence[str]) -> sp.csr_matrix:
    """``f(chosen) - f(rejected)`` per pair, CSR [n_pairs, len(vocab)]."""
    if len(chosen_texts) != len(rejected_texts):
        raise ValueError(f"{len(chosen_texts)} chosen vs {len(rejected_texts)} rejected "
                         "texts: pass one chosen and one rejected text per pair")
    return vocab.transform(chosen_texts) - vocab.transform(rejected_texts)


def sign_flipped(diff: sp.csr_matrix, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows of ``diff`` times signs s (a random permutation of ceil(n/2) +1s and floor(n/2)
    -1s, so the classes are balanced exactly), and labels ``(s > 0)`` in {0, 1}."""
    n = diff.shape[0]
    signs = np.where(np.arange(n) < (n + 1) // 2, 1.0, -1.0)
    signs = np.random.default_rng(seed).permutation(signs)
    return sp.diags(signs) @ diff, (signs > 0).astype(np.int64)


def fit_pairwise(vocab: BowVocabulary, chosen_texts: Sequence[str],
                 rejected_texts: Sequence[str], *, l2: float = 1e-3, seed: int = 0
                 ) -> LogisticRegression:
    """The Bradley-Terry weights ``w``, fitted by logistic regression without intercept.

    Each difference row is multiplied by a random sign s (label 1 if s = +1, else 0; see
    :func:`sign_flipped`), so the two classes are balanced; with no intercept the model is
    antisymmetric and the flips change nothing but the conditioning of the fit.
    """
    X, labels = sign_flipped(pairwise_features(vocab, chosen_texts, rejected_texts), seed)
    return LogisticRegression(fit_intercept=False).fit(X, labels, l2=l2)


def pairwise_accuracy(vocab: BowVocabulary, model: LogisticRegression,
                      chosen_texts: Sequence[str], rejected_texts: Sequence[str]) -> float:
    """Fraction of pairs where the chosen text scores higher; exact ties count 0.5."""
    margin = model.decision_function(pairwise_features(vocab, chosen_texts, rejected_texts))
    margin = margin - model.intercept  # the score difference ignores any intercept
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))
