"""IMDb movie reviews (Maas et al., ACL 2011) and a bag-of-words gold sentiment classifier.

The classifier is the gold reward of the IMDb controlled-sentiment task (Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences", Sec. 3.1, where the reward is a
sentiment classifier trained on IMDb): ``gold = classifier.logit(texts)`` (or
``predict_proba`` for P(positive)). Data: ``imdb/{train,test}.jsonl.gz`` under the data dir,
rows ``{"id", "rating", "label", "text"}``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import time

import numpy as np

from jaxrlhf.data import bow, tasks, tokenizer as tokenizer_lib
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


def cache_dir() -> str:
    """Where trained task artefacts (tokenizer, gold classifier) are kept between runs:
    ``$JAXRLHF_CACHE_DIR``, default ``~/.cache/jaxrlhf``."""
    return os.environ.get("JAXRLHF_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "jaxrlhf"))


@tasks.register("imdb_sentiment")
class ImdbSentimentTask:
    """Controlled sentiment on IMDb reviews: continue a review prefix positively.

    The small-scale form of Ziegler et al. (2019, §3.1) and of the DPO paper's Figure 2
    (Rafailov et al. 2023): prompts are the first ``prompt_words`` words of training
    reviews, demonstrations their next ``completion_words`` words, and the gold reward is
    P(positive) of prompt + response under a bag-of-words logistic regression trained on
    the IMDb training labels (its test accuracy is ``gold_test_accuracy``). The tokenizer is
    a byte-level BPE trained on training reviews. Both are trained once and cached in
    ``cache_dir()``.
    """

    name = "imdb_sentiment"

    def __init__(self, prompt_words: tuple[int, int] = (2, 6), completion_words: int = 40,
                 vocab_size: int = 4096, tokenizer_reviews: int = 20000):
        self.prompt_words = prompt_words
        self.completion_words = completion_words
        self.vocab_size = vocab_size
        self.tokenizer_reviews = tokenizer_reviews
        self._dir = os.path.join(cache_dir(), "imdb_sentiment")

    @functools.cached_property
    def _reviews(self) -> list[str]:
        return load_imdb("train")[0]

    @functools.cached_property
    def tokenizer(self):
        path = os.path.join(self._dir, f"tokenizer_{self.vocab_size}")
        if not os.path.isdir(path):
            tok = tokenizer_lib.train_bpe_tokenizer(
                self._reviews[: self.tokenizer_reviews], self.vocab_size)
            tok.save_pretrained(path)
        return tokenizer_lib.load_tokenizer(path)

    @functools.cached_property
    def gold(self) -> bow.TextClassifier:
        path = os.path.join(self._dir, "gold")
        if not os.path.isdir(path):
            vocab, model, accuracy = train_gold_classifier()
            bow.TextClassifier(vocab, model).save(path)
            with open(os.path.join(path, "test_accuracy.json"), "w") as f:
                json.dump({"imdb_test_accuracy": accuracy}, f)
        return bow.TextClassifier.load(path)

    @property
    def gold_test_accuracy(self) -> float:
        self.gold  # trains it if needed
        with open(os.path.join(self._dir, "gold", "test_accuracy.json")) as f:
            return json.load(f)["imdb_test_accuracy"]

    def _split(self, n: int, seed: int) -> list[tuple[str, str]]:
        rng = np.random.default_rng([seed, 7])
        out = []
        for i in rng.integers(0, len(self._reviews), size=n):
            words = self._reviews[i].split()
            k = int(rng.integers(self.prompt_words[0], self.prompt_words[1] + 1))
            out.append((" ".join(words[:k]),
                        " " + " ".join(words[k: k + self.completion_words])))
        return out

    def prompts(self, n: int, seed: int) -> list[str]:
        return [prompt for prompt, _ in self._split(n, seed)]

    def demonstrations(self, n: int, seed: int) -> list[dict[str, str]]:
        return [{"prompt": p, "completion": c} for p, c in self._split(n, seed)]

    def gold_reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """P(positive) of prompt + response under the gold classifier. [n] float32."""
        texts = [p + r for p, r in zip(prompts, responses)]
        return np.asarray(self.gold.predict_proba(texts), np.float32)

    unigram_entropy = tasks.completion_unigram_entropy
