"""What a task is: prompts, demonstrations and a programmatic gold reward.

A task is the ground truth an experiment measures against: the SFT stage learns its
demonstrations, the reward stage can label pairs with its gold reward, and PPO reports the
gold reward of what the policy samples. Tasks are looked up by name in
``jaxrlhf.tasks.TASKS``.
"""
from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from jaxrlhf.data.tokenizer import decode_rows

# (query, query_mask, response, response_mask) -> [batch] gold reward, traceable under jit.
GoldFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# Where a task's prompts come from: training ("train") or held-out evaluation ("test").
SPLITS = ("train", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"task split {split!r} is not one of {SPLITS}")


@runtime_checkable
class Task(Protocol):
    """A built-in task with a gold reward that can score any response."""

    name: str
    tokenizer: transformers.PreTrainedTokenizerFast
    gold_is_logit: bool    # the gold is a classifier's logit: sigmoid(gold) is reported too
    gold_is_accuracy: bool  # the gold is exact-match correctness (0 or 1): accuracy, pass@k

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        """``n`` prompts of ``split`` (``SPLITS``: held-out evaluation reads "test"),
        deterministic in ``seed``."""

    def demonstrations(self, n: int, seed: int, split: str = "train") -> list[dict[str, str]]:
        """``n`` ``{prompt, completion}`` demonstrations of ``split``, deterministic in
        ``seed``."""

    def gold_reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """The gold reward of each (prompt, response), float32 [n]."""

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the demonstrations' completion tokens: the loss SFT must beat."""


@runtime_checkable
class TokenGoldTask(Task, Protocol):
    """A task whose gold reward is also a pure function of token ids (jittable): a
    :data:`GoldFn` of the left-padded prompts and the responses."""

    def gold_reward_from_tokens(self, query: jax.Array, query_mask: jax.Array,
                                response: jax.Array, response_mask: jax.Array) -> jax.Array:
        """The gold reward from prompt ids and mask [batch, P] and response ids and mask
        [batch, T] -> [batch]."""


def completion_unigram_entropy(task: Task, n: int = 2000, seed: int = 0) -> float:
    """Entropy (nats) of the unigram distribution of a task's demonstration completion
    tokens incl. EOS: the loss of a model that ignores context, which SFT must beat."""
    counts: collections.Counter[int] = collections.Counter()
    for ex in task.demonstrations(n, seed):
        ids = task.tokenizer(ex["completion"], add_special_tokens=False)["input_ids"]
        counts.update(ids + [task.tokenizer.eos_token_id])
    total = sum(counts.values())
    return float(-sum(c / total * math.log(c / total) for c in counts.values()))


def traceable_gold(task: Task, tokenizer) -> GoldFn:
    """The task's gold reward as a traceable function of token ids.

    Jitted directly when the task computes it from tokens (``sentiment``, ``arithmetic``) of
    its own vocabulary; otherwise — a text task (IMDb's classifier), or a policy with
    another tokenizer (one pretrained on other text) — a ``jax.pure_callback`` that decodes
    the texts on the host and calls the task's text scorer, so a PPO iteration stays one
    compiled program.
    """
    if isinstance(task, TokenGoldTask) and tokenizer.get_vocab() == task.tokenizer.get_vocab():
        return task.gold_reward_from_tokens

    def on_host(query, query_mask, response, mask):
        prompts = decode_rows(tokenizer, query, query_mask)
        responses = decode_rows(tokenizer, response, mask)
        return np.asarray(task.gold_reward(prompts, responses), np.float32)

    def gold(query, query_mask, response, mask):
        out = jax.ShapeDtypeStruct((query.shape[0],), jnp.float32)
        return jax.pure_callback(on_host, out, query, query_mask, response, mask)
    return gold
