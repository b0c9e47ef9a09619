"""Bag-of-words features and the JAX logistic regression against a numpy Newton solve."""
import numpy as np
import pytest

from jaxrlhf.data import bow


def newton_logreg(X, y, l2, fit_intercept=True, iters=50):
    """Independent reference: Newton's method (IRLS) in float64 on
    mean BCE + l2/2 ||w||^2, intercept unpenalised."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))]) if fit_intercept else X.astype(np.float64)
    reg = np.full(A.shape[1], l2)
    if fit_intercept:
        reg[-1] = 0.0
    theta = np.zeros(A.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ theta))
        grad = A.T @ (p - y) / n + reg * theta
        hess = (A * (p * (1 - p))[:, None]).T @ A / n + np.diag(reg)
        theta -= np.linalg.solve(hess, grad)
    z = A @ theta
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum(theta[:d] ** 2)
    return theta[:d], (theta[d] if fit_intercept else 0.0), loss


def _problem(n=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w + 0.5)))).astype(np.int64)
    return X.astype(np.float32), y


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_logreg_matches_newton(fit_intercept):
    X, y = _problem()
    l2 = 0.05
    w_ref, b_ref, loss_ref = newton_logreg(X.astype(np.float64), y, l2, fit_intercept)
    model = bow.LogisticRegression().fit(X, y, l2=l2, fit_intercept=fit_intercept)
    np.testing.assert_allclose(model.coef, w_ref, atol=2e-4, rtol=1e-3)
    assert model.intercept == pytest.approx(b_ref, abs=2e-4)
    assert model.info["objective"] == pytest.approx(loss_ref, rel=1e-5, abs=1e-6)


def test_sparse_and_dense_fits_agree():
    X, y = _problem(n=120, d=6, seed=1)
    X[np.abs(X) < 0.7] = 0.0
    nz = X != 0
    indptr = np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64)
    sparse = bow.BowMatrix(indptr, np.nonzero(nz)[1].astype(np.int32), X[nz], X.shape[1])
    np.testing.assert_array_equal(sparse.toarray(), X)
    dense_fit = bow.LogisticRegression().fit(X, y, l2=0.01)
    sparse_fit = bow.LogisticRegression().fit(sparse, y, l2=0.01)
    np.testing.assert_allclose(sparse_fit.coef, dense_fit.coef, atol=1e-4)
    np.testing.assert_allclose(sparse_fit.predict_proba(sparse), dense_fit.predict_proba(X),
                               atol=1e-5)


def test_predict_proba_formula():
    model = bow.LogisticRegression(np.array([1.0, -2.0, 0.5]), intercept=0.3)
    X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    z = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    np.testing.assert_allclose(model.decision_function(X), z, rtol=1e-6)
    np.testing.assert_allclose(model.predict_proba(X), 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_array_equal(model.predict(X), (z > 0).astype(int))
    assert model.score(X, [1, 0, 1, 0]) == 1.0


def test_fit_rejects_bad_labels():
    X, _ = _problem(n=10, d=2)
    with pytest.raises(ValueError, match="0 or 1"):
        bow.LogisticRegression().fit(X, np.full(10, 2))
    with pytest.raises(ValueError, match="shape"):
        bow.LogisticRegression().fit(X, np.zeros(9))


def test_tokenizer_strips_html_and_lowercases():
    assert bow.tokenize("Great film!<br /><br />I LOVED it, didn't you?") == [
        "great", "film", "i", "loved", "it", "didn't", "you"]
    assert "br" not in bow.tokenize("a<br/>b <br />c")


def test_vocabulary_fit_and_transform():
    texts = ["good good movie", "bad movie", "good plot<br />bad acting", "unique"]
    vocab = bow.BowVocabulary.fit(texts, min_count=2, ngram=(1, 1), normalize=False)
    assert vocab.terms == ["bad", "good", "movie"]  # df 2 each, ties by term; 'unique' df 1
    X = vocab.transform(["good good movie", "nothing known"]).toarray()
    np.testing.assert_allclose(X, [[0, np.log(3), np.log(2)], [0, 0, 0]], rtol=1e-6)
    norm = bow.BowVocabulary.fit(texts, min_count=1, ngram=(1, 2))
    assert "good movie" in norm.index
    row = norm.transform(["good movie plot"]).toarray()[0]
    assert np.linalg.norm(row) == pytest.approx(1.0, rel=1e-6)
    assert len(bow.BowVocabulary.fit(texts, max_features=2, min_count=1)) == 2


def test_difference_and_sign_flip_balance():
    vocab = bow.BowVocabulary.fit(["a b c", "a b", "c d", "d"], min_count=1, normalize=False)
    chosen, rejected = ["a b", "c", "d d", "a"], ["c", "a b", "a", "a"]
    diff = bow.pairwise_features(vocab, chosen, rejected)
    np.testing.assert_allclose(diff.toarray(),
                               vocab.transform(chosen).toarray()
                               - vocab.transform(rejected).toarray(), atol=1e-6)
    for n in (10, 11, 1000):
        big = diff.take(np.arange(n) % len(diff))
        X, y = bow.sign_flipped(big, seed=3)
        assert abs(int(y.sum()) - n / 2) <= 0.5
        signs = np.where(y == 1, 1.0, -1.0)[:, None]
        np.testing.assert_allclose(X.toarray(), big.toarray() * signs)


def test_pairwise_fit_learns_a_preference():
    rng = np.random.default_rng(0)
    pos, neg, filler = ["great", "fine", "lovely"], ["awful", "rude", "wrong"], list("abcdef")
    def text(words):
        return " ".join(rng.choice(words + filler, size=6))
    chosen = [text(pos) for _ in range(200)]
    rejected = [text(neg) for _ in range(200)]
    vocab = bow.BowVocabulary.fit(chosen + rejected, min_count=1)
    model = bow.fit_pairwise(vocab, chosen[:150], rejected[:150], l2=1e-3)
    assert model.intercept == 0.0
    assert bow.pairwise_accuracy(vocab, model, chosen[150:], rejected[150:]) > 0.95
    # Ties count one half.
    assert bow.pairwise_accuracy(vocab, model, ["a b"], ["b a"]) == 0.5


def test_save_load_round_trip(tmp_path):
    texts = ["good fun film", "bad dull film", "good film", "dull plot"]
    vocab = bow.BowVocabulary.fit(texts, min_count=1, ngram=(1, 2), use_idf=True)
    model = bow.LogisticRegression().fit(vocab.transform(texts), [1, 0, 1, 0], l2=1e-2)
    bow.TextClassifier(vocab, model).save(tmp_path)
    loaded = bow.TextClassifier.load(tmp_path)
    assert loaded.vocab.terms == vocab.terms and loaded.vocab.ngram == (1, 2)
    np.testing.assert_array_equal(loaded.model.coef, model.coef)
    assert loaded.model.intercept == model.intercept
    assert loaded.model.info == model.info
    np.testing.assert_array_equal(loaded.logit(texts + ["unseen"]),
                                  bow.TextClassifier(vocab, model).logit(texts + ["unseen"]))
