"""IMDb movie reviews (Maas et al., ACL 2011) and a bag-of-words gold sentiment classifier.

The classifier is the gold reward of the IMDb controlled-sentiment task (Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences", Sec. 3.1, where the reward is a
sentiment classifier trained on IMDb): ``gold = classifier.logit(texts)`` (or
``predict_proba`` for P(positive)). Data: ``imdb/{train,test}.jsonl.gz`` under the data dir,
rows ``{"id", "rating", "label", "text"}``.
"""
from __future__ import annotations

import re
import time

import numpy as np

from jaxrlhf.data import bow
from jaxrlhf.data import sft as sft_data

SPLITS = ("train", "test")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)

# Defaults of the gold classifier: unigrams + bigrams, log(1 + tf), L2-normalised rows.
# l2 was chosen on a held-out 5,000 reviews of the *train* split (never on test) from
# {1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4}: 89.9% there (unigrams only, 20k features: 89.3%).
GOLD_DEFAULTS = dict(max_features=50000, min_count=2, ngram=(1, 2), l2=3e-6)


def clean_review(text: str) -> str:
    """The review with ``<br />`` line breaks replaced by spaces."""
    return _BR.sub(" ", text)


def load_imdb(split: str, limit: int | None = None, source: str | None = None
              ) -> tuple[list[str], np.ndarray]:
    """``(texts, labels)`` of an IMDb split in file order; texts cleaned by
    :func:`clean_review`, labels int64 in {0, 1} (1 = positive). ``limit`` keeps the first
    rows (the files are ordered by label, so a prefix is one-sided; use
    :func:`balanced_subset`). A malformed row names its file and line."""
    if split not in SPLITS:
        raise ValueError(f"IMDb split {split!r} is not one of {SPLITS}")
    records = sft_data.load_records(source or f"imdb/{split}.jsonl.gz")
    if limit is not None:
        records = records[:limit]
    texts, labels = [], []
    for origin, row in records:
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str):
            raise ValueError(f"{origin}: IMDb row needs a string 'text'; got keys {sorted(row)}")
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"{origin}: IMDb 'label' must be 0 or 1, got {label!r}")
        texts.append(clean_review(text))
        labels.append(label)
    return texts, np.asarray(labels, np.int64)


def balanced_subset(texts: list[str], labels: np.ndarray, n: int, seed: int = 0
                    ) -> tuple[list[str], np.ndarray]:
    """A random subset of ``n`` examples, ``n // 2`` of each class (n even)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n // 2]
                          for c in (0, 1)])
    idx = rng.permutation(idx)
    return [texts[i] for i in idx], labels[idx]


def train_gold_classifier(train_size: int | None = None, test_size: int | None = None, *,
                          max_features: int = GOLD_DEFAULTS["max_features"],
                          min_count: int = GOLD_DEFAULTS["min_count"],
                          ngram: tuple[int, int] = GOLD_DEFAULTS["ngram"],
                          l2: float = GOLD_DEFAULTS["l2"], steps: int = 500,
                          tol: float = 1e-5, seed: int = 0,
                          verbose: bool = False
                          ) -> tuple[bow.BowVocabulary, bow.LogisticRegression, float]:
    """Fit the vocabulary and the logistic regression on IMDb train; return
    ``(vocab, model, test_accuracy)``. ``train_size``/``test_size`` take balanced random
    subsets (None: the whole 25,000). ``tol`` is the L-BFGS gradient-norm stopping
    tolerance (1e-5: test accuracy within 0.01% of 1e-6, in ~60% of the iterations).
    Save with ``bow.TextClassifier(vocab, model).save(dir)``.
    """
    t0 = time.perf_counter()
    train_x, train_y = load_imdb("train")
    test_x, test_y = load_imdb("test")
    if train_size is not None:
        train_x, train_y = balanced_subset(train_x, train_y, train_size, seed)
    if test_size is not None:
        test_x, test_y = balanced_subset(test_x, test_y, test_size, seed + 1)
    vocab = bow.BowVocabulary.fit(train_x, max_features=max_features, min_count=min_count,
                                  ngram=ngram)
    X_train = vocab.transform(train_x)
    t1 = time.perf_counter()
    model = bow.LogisticRegression().fit(X_train, train_y, l2=l2, steps=steps, tol=tol)
    t2 = time.perf_counter()
    accuracy = model.score(vocab.transform(test_x), test_y)
    if verbose:
        print(f"imdb gold: {len(train_x)} train / {len(test_x)} test, {len(vocab)} features, "
              f"features {t1 - t0:.1f}s, fit {t2 - t1:.1f}s ({model.info['iterations']} it), "
              f"total {time.perf_counter() - t0:.1f}s, test accuracy {accuracy:.4f}")
    return vocab, model, accuracy
