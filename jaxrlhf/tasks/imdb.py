"""``imdb_sentiment``: continue IMDb review prefixes; the gold reward is a sentiment classifier.

The setting of the DPO paper's controlled sentiment generation (Rafailov et al. 2023,
§6.1 and Fig. 2; after Ziegler et al. 2019, §3.1): prompts are the first 2–8 tokens of IMDb
reviews (Maas et al. 2011) — training prompts from the train split, held-out ones from the
test split —, demonstrations their next 48 tokens, and the gold reward is the **logit**
(log-odds of "positive") of prompt + response under a bag-of-words logistic regression
trained on the 25,000 IMDb training labels (``jaxrlhf.baselines.imdb_gold``), capped at
:data:`CAP_PERCENTILE` of its logits on the real test reviews; ``sigmoid(gold)`` =
P(positive) is reported beside it.

Why the cap: the classifier's features are L2-normalised, so a text made only of positive
words scores like the most positive reviews ever written. Measured: "excellent" (any number
of times) has logit 12.64 and a test prefix followed by "excellent" x 40 averages 11.6,
while the 25,000 test reviews average +2.74 (positive) / -3.08 (negative), their 99th
percentile is 7.13 and their maximum 12.70. Capped at the 99th percentile, degenerate text
earns no more than the top 1% of real reviews, and the range where methods differ (the
SFT policy's continuations: 0.28 ± 2.78) stays open. The tokenizer is the byte-level BPE
of 8,192 tokens trained on the cleaned training reviews — the one the pretraining stage
trains on the same text (``configs/pretrain/imdb.py``), so prefix lengths count the
pretrained LM's tokens.

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
from jaxrlhf.tasks.base import SPLITS, check_split, completion_unigram_entropy

GOLD_FILE = "gold.json"       # the classifier's test accuracy and its logit cap
CAP_PERCENTILE = 99.0


def cache_dir() -> str:
    """Where trained task assets (tokenizer, gold classifier) are kept between runs:
    ``$JAXRLHF_CACHE_DIR``, default ``~/.cache/jaxrlhf``."""
    return os.environ.get("JAXRLHF_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "jaxrlhf"))


class ImdbSentimentTask:
    """Controlled sentiment on IMDb reviews: continue a review prefix positively."""

    name = "imdb_sentiment"
    gold_is_logit = True
    gold_is_accuracy = False

    def __init__(self, reviews: dict[str, list[str]], tokenizer, gold: TextClassifier,
                 gold_test_accuracy: float, logit_cap: float, *, prompt_tokens: tuple[int, int] = (2, 8),
                 completion_tokens: int = 48):
        self.reviews = reviews            # {"train": [...], "test": [...]}
        self.tokenizer = tokenizer
        self.gold = gold
        self.gold_test_accuracy = gold_test_accuracy
        self.logit_cap = logit_cap
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens

    def _split(self, n: int, seed: int, split: str) -> list[tuple[str, str]]:
        """``n`` (prefix, continuation) texts: a random review of ``split``, its first
        2–8 tokens and the next ``completion_tokens``, decoded."""
        check_split(split)
        reviews = self.reviews[split]
        rng = np.random.default_rng([seed, 7])
        picks = rng.integers(0, len(reviews), size=n)
        lengths = rng.integers(self.prompt_tokens[0], self.prompt_tokens[1] + 1, size=n)
        ids = self.tokenizer([reviews[i] for i in picks], add_special_tokens=False)["input_ids"]
        decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
        return [(decode(row[:k]), decode(row[k:k + self.completion_tokens]))
                for row, k in zip(ids, lengths)]

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        return [prompt for prompt, _ in self._split(n, seed, split)]

    def demonstrations(self, n: int, seed: int, split: str = "train") -> list[dict[str, str]]:
        return [{"prompt": p, "completion": c} for p, c in self._split(n, seed, split)]

    def gold_reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """The gold classifier's logit of prompt + response (``TextClassifier.logit``, its
        decision function), capped at ``logit_cap``. [n] float32"""
        texts = [p + r for p, r in zip(prompts, responses)]
        return np.minimum(self.gold.logit(texts), self.logit_cap).astype(np.float32)

    unigram_entropy = completion_unigram_entropy


def _tokenizer(directory: str, reviews: list[str], vocab_size: int):
    path = os.path.join(directory, f"tokenizer_{vocab_size}")
    if not os.path.isdir(path):
        print(f"[imdb_sentiment] training a {vocab_size}-token BPE tokenizer -> {path}")
        tokenizer_lib.train_bpe_tokenizer(reviews, vocab_size).save_pretrained(path)
    return tokenizer_lib.load_tokenizer(path)


def _gold(directory: str, test_reviews: list[str]) -> tuple[TextClassifier, dict]:
    """The classifier and ``{"imdb_test_accuracy", "logit_cap"}``."""
    path = os.path.join(directory, "gold")
    if not os.path.exists(os.path.join(path, GOLD_FILE)):
        print(f"[imdb_sentiment] training the gold classifier on IMDb train -> {path}")
        classifier, accuracy = train_gold_classifier()
        cap = float(np.percentile(classifier.logit(test_reviews), CAP_PERCENTILE))
        classifier.save(path)
        with open(os.path.join(path, GOLD_FILE), "w") as f:
            json.dump({"imdb_test_accuracy": accuracy, "logit_cap": cap}, f)
    with open(os.path.join(path, GOLD_FILE)) as f:
        return TextClassifier.load(path), json.load(f)


def load_task(*, vocab_size: int = 8192, tokenizer_reviews: int = 25000,
              directory: str | None = None) -> ImdbSentimentTask:
    """The IMDb task with its tokenizer (a BPE trained on the first ``tokenizer_reviews``
    training reviews) and gold classifier, each trained on first use and read from
    ``directory`` (default ``cache_dir()/imdb_sentiment``) afterwards."""
    directory = directory or os.path.join(cache_dir(), "imdb_sentiment")
    reviews = {split: load_imdb(split)[0] for split in SPLITS}
    tokenizer = _tokenizer(directory, reviews["train"][:tokenizer_reviews], vocab_size)
    gold, facts = _gold(directory, reviews["test"])
    return ImdbSentimentTask(reviews, tokenizer, gold, facts["imdb_test_accuracy"],
                             facts["logit_cap"])
