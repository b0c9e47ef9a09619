"""``imdb_sentiment``: continue IMDb review prefixes; the gold reward is a sentiment classifier.

The small-scale form of Ziegler et al. (2019, §3.1) and of the DPO paper's Figure 2
(Rafailov et al. 2023): prompts are the first 2–6 words of IMDb training reviews (Maas et al.
2011), demonstrations their next 40 words, and the gold reward is P(positive) of prompt +
response under a bag-of-words logistic regression trained on the IMDb training labels
(``jaxrlhf.baselines.imdb_gold``). The tokenizer is a byte-level BPE trained on training
reviews.

Both are built by :func:`load_task`, explicitly: trained once, saved under the cache
directory (``$JAXRLHF_CACHE_DIR``, default ``~/.cache/jaxrlhf``) and read back on later runs.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxrlhf.baselines.imdb_gold import train_gold_classifier
from jaxrlhf.baselines.text_classifier import TextClassifier
from jaxrlhf.data import tokenizer as tokenizer_lib
from jaxrlhf.data.imdb import load_imdb
from jaxrlhf.tasks.base import completion_unigram_entropy

ACCURACY_FILE = "test_accuracy.json"


def cache_dir() -> str:
    """Where trained task assets (tokenizer, gold classifier) are kept between runs:
    ``$JAXRLHF_CACHE_DIR``, default ``~/.cache/jaxrlhf``."""
    return os.environ.get("JAXRLHF_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "jaxrlhf"))


class ImdbSentimentTask:
    """Controlled sentiment on IMDb reviews: continue a review prefix positively."""

    name = "imdb_sentiment"

    def __init__(self, reviews: list[str], tokenizer, gold: TextClassifier,
                 gold_test_accuracy: float, *, prompt_words: tuple[int, int] = (2, 6),
                 completion_words: int = 40):
        self.reviews = reviews
        self.tokenizer = tokenizer
        self.gold = gold
        self.gold_test_accuracy = gold_test_accuracy
        self.prompt_words = prompt_words
        self.completion_words = completion_words

    def _split(self, n: int, seed: int) -> list[tuple[str, str]]:
        rng = np.random.default_rng([seed, 7])
        out = []
        for i in rng.integers(0, len(self.reviews), size=n):
            words = self.reviews[i].split()
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

    unigram_entropy = completion_unigram_entropy


def _tokenizer(directory: str, reviews: list[str], vocab_size: int):
    path = os.path.join(directory, f"tokenizer_{vocab_size}")
    if not os.path.isdir(path):
        print(f"[imdb_sentiment] training a {vocab_size}-token BPE tokenizer -> {path}")
        tokenizer_lib.train_bpe_tokenizer(reviews, vocab_size).save_pretrained(path)
    return tokenizer_lib.load_tokenizer(path)


def _gold(directory: str) -> tuple[TextClassifier, float]:
    path = os.path.join(directory, "gold")
    if not os.path.exists(os.path.join(path, ACCURACY_FILE)):
        print(f"[imdb_sentiment] training the gold classifier on IMDb train -> {path}")
        classifier, accuracy = train_gold_classifier()
        classifier.save(path)
        with open(os.path.join(path, ACCURACY_FILE), "w") as f:
            json.dump({"imdb_test_accuracy": accuracy}, f)
    with open(os.path.join(path, ACCURACY_FILE)) as f:
        accuracy = json.load(f)["imdb_test_accuracy"]
    return TextClassifier.load(path), accuracy


def load_task(*, vocab_size: int = 4096, tokenizer_reviews: int = 20000,
              directory: str | None = None) -> ImdbSentimentTask:
    """The IMDb task with its tokenizer and gold classifier, each trained on first use and
    read from ``directory`` (default ``cache_dir()/imdb_sentiment``) afterwards."""
    directory = directory or os.path.join(cache_dir(), "imdb_sentiment")
    reviews = load_imdb("train")[0]
    tokenizer = _tokenizer(directory, reviews[:tokenizer_reviews], vocab_size)
    gold, accuracy = _gold(directory)
    return ImdbSentimentTask(reviews, tokenizer, gold, accuracy)
