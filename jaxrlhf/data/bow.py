"""Bag-of-words logistic regression: a small, fast, inspectable text classifier.

Used as a gold reward (IMDb sentiment, :mod:`jaxrlhf.data.imdb`) and as a preference
baseline (pairwise logistic regression on feature differences). Features are kept sparse
in CSR form (:class:`BowMatrix`), never densified: 25,000 IMDb reviews with unigrams and
bigrams are about 6M non-zeros (~70 MB), where a dense float32 [25000, 20000] matrix would
be 2 GB. The logistic regression is fitted full-batch with L-BFGS (``optax.lbfgs``, zoom
line search) inside one jitted ``lax.while_loop``; sparse products are a gather plus a
``segment_sum``. Prediction is plain numpy, so scoring text needs no compilation.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_TAG = re.compile(r"<[^>]*>")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_WEIGHTINGS = ("log", "tf", "binary")


def tokenize(text: str) -> list[str]:
    """Lowercase words: HTML tags (``<br />``) become spaces; a word is ``[a-z0-9]+``
    with an optional apostrophe suffix (``don't``, ``film's``)."""
    return _WORD.findall(_TAG.sub(" ", text.lower()))


def _terms(tokens: list[str], ngram: tuple[int, int]) -> list[str]:
    lo, hi = ngram
    out = tokens[:] if lo <= 1 else []
    for n in range(max(lo, 2), hi + 1):
        out += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return out


# -- sparse features --------------------------------------------------------------------
@dataclasses.dataclass
class BowMatrix:
    """A CSR float32 matrix [n_rows, n_features]: row ``i`` holds
    ``values[indptr[i]:indptr[i+1]]`` at columns ``indices[indptr[i]:indptr[i+1]]``.
    A column may repeat within a row; repeated entries add."""
    indptr: np.ndarray   # [n_rows + 1] int64
    indices: np.ndarray  # [nnz] int32
    values: np.ndarray   # [nnz] float32
    n_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.indptr) - 1, self.n_features

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_ids(self) -> np.ndarray:
        """Row index of every stored entry, [nnz] int32."""
        return np.repeat(np.arange(len(self), dtype=np.int32), np.diff(self.indptr))

    def toarray(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        np.add.at(out, (self.row_ids, self.indices), self.values)
        return out

    def dot(self, w: np.ndarray) -> np.ndarray:
        """``X @ w`` for a vector w [n_features], in float64."""
        contrib = self.values.astype(np.float64) * np.asarray(w, np.float64)[self.indices]
        return np.bincount(self.row_ids, weights=contrib, minlength=len(self))

    def take(self, rows: Sequence[int] | np.ndarray) -> BowMatrix:
        """The given rows, in the given order."""
        rows = np.asarray(rows, np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = (np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
                if len(rows) else np.zeros(0, np.int64)).astype(np.int64)
        return BowMatrix(indptr, self.indices[flat], self.values[flat], self.n_features)

    def scale_rows(self, scale: np.ndarray) -> BowMatrix:
        scale = np.asarray(scale, np.float32)
        return BowMatrix(self.indptr, self.indices,
                         self.values * scale[self.row_ids], self.n_features)

    def __sub__(self, other: BowMatrix) -> BowMatrix:
        """Row-wise difference (entries of ``other`` negated and appended per row)."""
        if self.shape != other.shape:
            raise ValueError(f"shape mismatch {self.shape} vs {other.shape}")
        a_len, b_len = np.diff(self.indptr), np.diff(other.indptr)
        indptr = np.concatenate([[0], np.cumsum(a_len + b_len)]).astype(np.int64)
        # Position of each entry in the merged arrays.
        a_rows = self.row_ids
        a_pos = indptr[:-1][a_rows] + (np.arange(len(self.indices)) - self.indptr[:-1][a_rows])
        b_rows = other.row_ids
        b_pos = (indptr[:-1][b_rows] + a_len[b_rows]
                 + (np.arange(len(other.indices)) - other.indptr[:-1][b_rows]))
        indices = np.empty(indptr[-1], np.int32)
        values = np.empty(indptr[-1], np.float32)
        indices[a_pos], values[a_pos] = self.indices, self.values
        indices[b_pos], values[b_pos] = other.indices, -other.values
        return BowMatrix(indptr, indices, values, self.n_features)


# -- vocabulary -------------------------------------------------------------------------
@dataclasses.dataclass
class BowVocabulary:
    """Term -> column map and the feature weighting.

    Features of a text: per term count ``tf``, weighted by ``weighting`` (``"log"``:
    ``log(1 + tf)``, ``"tf"``: ``tf``, ``"binary"``: ``1``), times the term's smoothed
    ``idf = log((1 + n) / (1 + df)) + 1`` if ``use_idf``, then the row scaled to unit L2
    norm if ``normalize``. Out-of-vocabulary terms are dropped.
    """
    terms: list[str]
    ngram: tuple[int, int] = (1, 1)
    weighting: str = "log"
    use_idf: bool = False
    normalize: bool = True
    idf: np.ndarray | None = None

    def __post_init__(self):
        self.ngram = tuple(int(n) for n in self.ngram)
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} is not one of {_WEIGHTINGS}")
        if not (len(self.ngram) == 2 and 1 <= self.ngram[0] <= self.ngram[1]):
            raise ValueError(f"ngram must be (lo, hi) with 1 <= lo <= hi, got {self.ngram}")
        self.index = {t: i for i, t in enumerate(self.terms)}

    def __len__(self) -> int:
        return len(self.terms)

    @classmethod
    def fit(cls, texts: Sequence[str], max_features: int | None = 20000, min_count: int = 2,
            ngram: tuple[int, int] = (1, 1), weighting: str = "log", use_idf: bool = False,
            normalize: bool = True) -> BowVocabulary:
        """Keep terms occurring in at least ``min_count`` documents; of those the
        ``max_features`` with the highest document frequency (ties by term, so the result
        is deterministic). Terms are ordered by column = rank."""
        df: collections.Counter[str] = collections.Counter()
        for text in texts:
            df.update(set(_terms(tokenize(text), tuple(ngram))))
        kept = sorted((t for t, c in df.items() if c >= min_count), key=lambda t: (-df[t], t))
        if max_features is not None:
            kept = kept[:max_features]
        if not kept:
            raise ValueError(f"no term occurs in >= min_count={min_count} documents")
        idf = None
        if use_idf:
            n = len(texts)
            idf = (np.log((1 + n) / (1 + np.array([df[t] for t in kept], np.float64))) + 1
                   ).astype(np.float32)
        return cls(kept, tuple(ngram), weighting, use_idf, normalize, idf)

    def transform(self, texts: Sequence[str]) -> BowMatrix:
        """Features of ``texts`` as a :class:`BowMatrix` [len(texts), len(self)]."""
        indptr = [0]
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        get = self.index.get
        for text in texts:
            ids = [i for i in map(get, _terms(tokenize(text), self.ngram)) if i is not None]
            col, tf = np.unique(np.asarray(ids, np.int32), return_counts=True)
            tf = tf.astype(np.float32)
            v = (np.log1p(tf) if self.weighting == "log"
                 else tf if self.weighting == "tf" else np.ones_like(tf))
            if self.use_idf:
                v = v * self.idf[col]
            if self.normalize and len(v):
                v = v / np.float32(np.sqrt(np.sum(v * v)))
            cols.append(col)
            vals.append(v.astype(np.float32))
            indptr.append(indptr[-1] + len(col))
        return BowMatrix(np.asarray(indptr, np.int64),
                         np.concatenate(cols) if cols else np.zeros(0, np.int32),
                         np.concatenate(vals) if vals else np.zeros(0, np.float32), len(self))

    def save(self, directory: str | os.PathLike) -> None:
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"terms": self.terms, "ngram": list(self.ngram), "weighting": self.weighting,
                "use_idf": self.use_idf, "normalize": self.normalize,
                "idf": None if self.idf is None else [float(x) for x in self.idf]}
        (d / "bow_vocabulary.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BowVocabulary:
        meta = json.loads((pathlib.Path(directory) / "bow_vocabulary.json").read_text())
        idf = None if meta["idf"] is None else np.asarray(meta["idf"], np.float32)
        return cls(meta["terms"], tuple(meta["ngram"]), meta["weighting"], meta["use_idf"],
                   meta["normalize"], idf)


# -- logistic regression ----------------------------------------------------------------
class _Sparse(NamedTuple):
    rows: jax.Array
    cols: jax.Array
    vals: jax.Array


def _design(X) -> tuple[object, int, int]:
    """A jittable design (dense array or :class:`_Sparse`), n_rows, n_features."""
    if isinstance(X, BowMatrix):
        return (_Sparse(jnp.asarray(X.row_ids), jnp.asarray(X.indices),
                        jnp.asarray(X.values)), *X.shape)
    X = np.asarray(X, np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D [n, features], got shape {X.shape}")
    return jnp.asarray(X), *X.shape


def _logits(design, w, b, n_rows: int):
    if isinstance(design, _Sparse):
        return jax.ops.segment_sum(design.vals * w[design.cols], design.rows,
                                   num_segments=n_rows) + b
    return design @ w + b


@functools.partial(jax.jit, static_argnames=("n_rows", "steps", "fit_intercept"))
def _fit_lbfgs(design, y, w0, b0, l2, tol, *, n_rows: int, steps: int, fit_intercept: bool):
    def loss_fn(params):
        w, b = params
        b = b if fit_intercept else jnp.zeros_like(b)
        z = _logits(design, w, b, n_rows)
        # mean binary cross-entropy from logits: softplus(z) - y z
        nll = jnp.mean(jax.nn.softplus(z) - y * z)
        return nll + 0.5 * l2 * jnp.sum(w * w)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def body(carry):
        params, state, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=loss_fn)
        return optax.apply_updates(params, updates), state, i + 1

    def cond(carry):
        _, state, i = carry
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (i == 0) | ((i < steps) & (grad_norm >= tol))

    params = (w0, b0)
    params, _, iters = jax.lax.while_loop(cond, body, (params, opt.init(params), 0))
    return params, loss_fn(params), iters


class LogisticRegression:
    """Binary logistic regression ``P(y=1 | x) = sigmoid(x . coef + intercept)``.

    Fitted by minimising ``mean_i BCE(y_i, sigmoid(z_i)) + l2/2 * ||coef||^2`` (the
    intercept is not penalised) with full-batch L-BFGS. ``X`` is a dense [n, d] array or a
    :class:`BowMatrix`.
    """

    def __init__(self, coef: np.ndarray | None = None, intercept: float = 0.0,
                 fit_intercept: bool = True):
        self.coef = None if coef is None else np.asarray(coef, np.float32)
        self.intercept = float(intercept)
        self.fit_intercept = fit_intercept
        self.info: dict = {}

    def fit(self, X, y, l2: float = 1e-4, steps: int = 500, lr: float | None = None,
            tol: float = 1e-6, fit_intercept: bool | None = None) -> LogisticRegression:
        """Fit on labels ``y`` in {0, 1}. ``lr`` is unused (L-BFGS chooses its step by line
        search) and accepted for interface compatibility. Sets ``self.info`` to the final
        objective and iteration count."""
        del lr
        if fit_intercept is not None:
            self.fit_intercept = fit_intercept
        y = np.asarray(y)
        design, n_rows, n_features = _design(X)
        if y.shape != (n_rows,):
            raise ValueError(f"y has shape {y.shape}, expected ({n_rows},)")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels y must be 0 or 1")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        (w, b), loss, iters = _fit_lbfgs(
            design, jnp.asarray(y, jnp.float32), jnp.zeros(n_features, jnp.float32),
            jnp.zeros((), jnp.float32), jnp.float32(l2), jnp.float32(tol),
            n_rows=n_rows, steps=int(steps), fit_intercept=self.fit_intercept)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(f"logistic regression objective is {loss} after "
                                     f"{int(iters)} L-BFGS iterations")
        self.coef = np.asarray(w, np.float32)
        self.intercept = float(b) if self.fit_intercept else 0.0
        self.info = {"objective": loss, "iterations": int(iters), "l2": float(l2)}
        return self

    def _check(self):
        if self.coef is None:
            raise RuntimeError("LogisticRegression is not fitted")

    def decision_function(self, X) -> np.ndarray:
        """The logit ``x . coef + intercept`` of each row, float64 [n]."""
        self._check()
        if isinstance(X, BowMatrix):
            return X.dot(self.coef) + self.intercept
        return np.asarray(X, np.float64) @ self.coef.astype(np.float64) + self.intercept

    def predict_proba(self, X) -> np.ndarray:
        """``P(y=1 | x)`` of each row, float64 [n]."""
        z = self.decision_function(X)
        e = np.exp(-np.abs(z))  # sigmoid(z) without overflow, accurate in both tails
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)

    def score(self, X, y) -> float:
        """Accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def save(self, directory: str | os.PathLike) -> None:
        self._check()
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "logreg.npz", coef=self.coef)
        (d / "logreg.json").write_text(json.dumps(
            {"intercept": self.intercept, "fit_intercept": self.fit_intercept,
             "info": self.info}, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LogisticRegression:
        d = pathlib.Path(directory)
        meta = json.loads((d / "logreg.json").read_text())
        with np.load(d / "logreg.npz") as z:
            model = cls(z["coef"], meta["intercept"], meta["fit_intercept"])
        model.info = meta.get("info", {})
        return model


@dataclasses.dataclass
class TextClassifier:
    """A vocabulary and a logistic regression: text in, logit / probability out."""
    vocab: BowVocabulary
    model: LogisticRegression

    def logit(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.decision_function(self.vocab.transform(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(self.vocab.transform(texts))

    def save(self, directory: str | os.PathLike) -> None:
        self.vocab.save(directory)
        self.model.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        return cls(BowVocabulary.load(directory), LogisticRegression.load(directory))


# -- pairwise (preference) --------------------------------------------------------------
def pairwise_features(vocab: BowVocabulary, chosen_texts: Sequence[str],
                      rejected_texts: Sequence[str]) -> BowMatrix:
    """``f(chosen) - f(rejected)`` per pair."""
    if len(chosen_texts) != len(rejected_texts):
        raise ValueError(f"{len(chosen_texts)} chosen vs {len(rejected_texts)} rejected texts")
    return vocab.transform(chosen_texts) - vocab.transform(rejected_texts)


def fit_pairwise(vocab: BowVocabulary, chosen_texts: Sequence[str],
                 rejected_texts: Sequence[str], *, l2: float = 1e-3, steps: int = 500,
                 seed: int = 0) -> LogisticRegression:
    """Bradley-Terry with a linear score: ``P(a > b) = sigmoid(w . (f(a) - f(b)))``.

    Each difference row is multiplied by a random sign s (label 1 if s = +1, else 0; see
    :func:`sign_flipped`), so the two classes are balanced; with no intercept the model is
    antisymmetric and the flips change nothing but the conditioning of the fit.
    """
    X, labels = sign_flipped(pairwise_features(vocab, chosen_texts, rejected_texts), seed)
    return LogisticRegression(fit_intercept=False).fit(X, labels, l2=l2, steps=steps)


def sign_flipped(diff: BowMatrix, seed: int = 0) -> tuple[BowMatrix, np.ndarray]:
    """Rows of ``diff`` times signs s (a random permutation of ceil(n/2) +1s and floor(n/2)
    -1s, so the classes are balanced exactly), and labels ``(s > 0)`` in {0, 1}."""
    n = len(diff)
    signs = np.where(np.arange(n) < (n + 1) // 2, 1.0, -1.0).astype(np.float32)
    signs = np.random.default_rng(seed).permutation(signs)
    return diff.scale_rows(signs), (signs > 0).astype(np.int64)


def pairwise_accuracy(vocab: BowVocabulary, model: LogisticRegression,
                      chosen_texts: Sequence[str], rejected_texts: Sequence[str]) -> float:
    """Fraction of pairs where the chosen text scores higher; exact ties count 0.5."""
    margin = model.decision_function(pairwise_features(vocab, chosen_texts, rejected_texts))
    margin = margin - model.intercept  # the score difference ignores any intercept
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))
