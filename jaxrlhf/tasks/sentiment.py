"""``sentiment``: controlled sentiment on a tiny synthetic language.

A small-scale form of the controlled-sentiment task of Ziegler et al. (2019, "Fine-Tuning
Language Models from Human Preferences", Sec. 3): continue a short prefix; the gold reward
is the mean sentiment of the adjectives in the continuation. The language is a synthetic
grammar with its own word-level tokenizer, so the gold reward is also a per-token lookup
table usable inside jitted code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxrlhf.data.tokenizer import EOS, PAD, wrap
from jaxrlhf.tasks.base import check_split, completion_unigram_entropy

UNK = "<|unk|>"
SENTIMENT: dict[str, float] = {
    "amazing": 1.0, "wonderful": 1.0, "excellent": 1.0, "brilliant": 1.0,
    "good": 0.5, "nice": 0.5, "pleasant": 0.5, "fine": 0.5,
    "bad": -0.5, "dull": -0.5, "boring": -0.5, "poor": -0.5,
    "awful": -1.0, "terrible": -1.0, "horrible": -1.0, "dreadful": -1.0,
}
ADJECTIVES = list(SENTIMENT)
NOUNS = ["movie", "food", "book", "show", "music", "hotel", "game", "story", "service",
         "weather", "trip", "song"]
OWNERS = ["the", "my", "our", "this", "that"]
PEOPLE = ["friend", "sister", "teacher", "neighbor", "boss"]
LINKING = ["was", "seemed", "felt"]
REPORTING = ["said", "thought", "told", "me"]
INTENSIFIERS = ["very", "quite", "really", "so"]
CONNECTIVES = ["and", "but", "because", "then"]
FILLERS = ["we", "left", "early", "it", "all", "stayed", "late", "went", "home", "too"]
PUNCT = [".", ","]
WORDS = sorted(set(NOUNS + OWNERS + PEOPLE + LINKING + REPORTING + INTENSIFIERS
                   + CONNECTIVES + FILLERS + PUNCT + ADJECTIVES))

def _word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """WordLevel tokenizer: ``<|pad|>``=0, ``<|endoftext|>``=1, ``<|unk|>``=2, then words."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + WORDS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap(raw, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=UNK)


def _choice(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


class SentimentTask:
    """Controlled sentiment on a synthetic English-like language (see module docstring)."""

    name = "sentiment"
    gold_is_logit = False
    gold_is_accuracy = False

    def __init__(self, max_clauses: int = 3):
        self.max_clauses = max_clauses
        self.tokenizer = _word_tokenizer()
        vocab = self.tokenizer.get_vocab()
        # Per-token sentiment score and is-adjective indicator, both [vocab].
        self._score = np.zeros(len(vocab), np.float32)
        self._is_adjective = np.zeros(len(vocab), np.float32)
        for word, s in SENTIMENT.items():
            self._score[vocab[word]], self._is_adjective[vocab[word]] = s, 1.0

    # -- sampling ---------------------------------------------------------------------
    def _prompt(self, rng: np.random.Generator) -> str:
        subject = f"{_choice(rng, OWNERS)} {_choice(rng, NOUNS)}"
        if rng.random() < 0.5:
            return f"{subject} {_choice(rng, LINKING)}"
        person = f"{_choice(rng, ['my', 'our'])} {_choice(rng, PEOPLE)}"
        return f"{person} {_choice(rng, ['said', 'thought'])} {subject} {_choice(rng, LINKING)}"

    def _adjective_phrase(self, rng: np.random.Generator) -> str:
        adj = _choice(rng, ADJECTIVES)  # uniform over sentiment levels
        return f"{_choice(rng, INTENSIFIERS)} {adj}" if rng.random() < 0.3 else adj

    def _clause(self, rng: np.random.Generator) -> str:
        if rng.random() < 0.2:
            return f"{_choice(rng, CONNECTIVES)} {_choice(rng, FILLERS)} {_choice(rng, FILLERS)}"
        return (f"{_choice(rng, CONNECTIVES)} {_choice(rng, OWNERS)} {_choice(rng, NOUNS)} "
                f"{_choice(rng, LINKING)} {self._adjective_phrase(rng)}")

    def _completion(self, rng: np.random.Generator) -> str:
        parts = [self._adjective_phrase(rng)]
        for _ in range(int(rng.integers(self.max_clauses))):
            parts.append(self._clause(rng))
        return " " + " , ".join(parts) + " ."

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        """Generated prompts: both splits draw from one generator, which the callers keep
        apart by seed (held-out sets use ``seed + 1``)."""
        check_split(split)
        rng = np.random.default_rng(seed)
        return [self._prompt(rng) for _ in range(n)]

    def demonstrations(self, n: int, seed: int, split: str = "train") -> list[dict[str, str]]:
        """``{prompt, completion}``; the completion starts with a space and has no EOS text.
        Splits as in :meth:`prompts`."""
        check_split(split)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            prompt = self._prompt(rng)
            out.append({"prompt": prompt, "completion": self._completion(rng)})
        return out

    # -- gold reward ------------------------------------------------------------------
    def gold_reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Mean sentiment of the adjectives in each response (0 if none), in [-1, 1]."""
        del prompts  # the reward depends on the response only
        out = np.zeros(len(responses), np.float32)
        for i, text in enumerate(responses):
            scores = [SENTIMENT[w] for w in text.split() if w in SENTIMENT]
            out[i] = np.float32(np.mean(scores)) if scores else 0.0
        return out

    def gold_reward_from_tokens(self, query: jax.Array, query_mask: jax.Array,
                                response_ids: jax.Array, response_mask: jax.Array) -> jax.Array:
        """The same reward from response token ids [B, T] and mask [B, T] (the prompt does
        not matter); pure jnp, jittable."""
        del query, query_mask
        score, is_adj = jnp.asarray(self._score), jnp.asarray(self._is_adjective)
        mask = response_mask.astype(jnp.float32)
        ids = jnp.clip(response_ids, 0, score.shape[0] - 1)
        total = jnp.sum(score[ids] * mask, axis=-1)
        count = jnp.sum(is_adj[ids] * mask, axis=-1)
        return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)

    unigram_entropy = completion_unigram_entropy
