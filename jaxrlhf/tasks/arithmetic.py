"""``arithmetic``: multi-digit addition with a verifiable reward.

A reinforcement-learning-from-verifiable-rewards setting (the exact-answer rewards of
DeepSeekMath's GRPO, Shao et al. 2024, §4.1, and of Tülu 3's RLVR, Lambert et al. 2024,
§6): the prompt is ``"37+85="``, the demonstration completion is the sum's digits
(``"122"``), and the gold reward is **1.0 exactly when the response is the canonical
decimal answer followed by EOS, else 0.0** — so the mean gold on held-out prompts is the
policy's exact-match accuracy (``gold_is_accuracy``), and pass@k is computed from several
samples per prompt (``jaxrlhf.rl.evaluation``). There is no format component.

What counts as right (the same in both paths below; ``tests/test_arithmetic.py``):

- the answer's digits, most significant first, then EOS: ``"122"`` + EOS;
- wrong: another number, an empty response, any non-digit before EOS (``"12+2"``), trailing
  characters (``"1220"``), leading zeros (``"0122"``: the canonical form has none, as the
  demonstrations; ``"0"`` is the canonical zero), and a response without EOS.

Operands are uniform in ``[0, 10**digits)``. Held-out pairs are split from training pairs
by a hash of the pair (:func:`split_of`, ``TEST_PERCENT`` of all pairs), so no held-out
prompt is ever a training prompt. The tokenizer is character-level with 15 tokens (pad,
EOS, unk, the ten digits, ``+``, ``=``), so the gold reward is also a pure function of the
token ids, jitted inside the PPO iteration (:meth:`ArithmeticTask.gold_reward_from_tokens`).
"""
from __future__ import annotations

import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from jaxrlhf.data.tokenizer import EOS, PAD, wrap
from jaxrlhf.tasks.base import check_split, completion_unigram_entropy

UNK = "<|unk|>"
SYMBOLS = list("0123456789+=")
TEST_PERCENT = 10          # held-out share of all operand pairs (by hash)
PROMPT = re.compile(r"^(\d+)\+(\d+)=$")


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character: ``<|pad|>``=0, ``<|endoftext|>``=1, ``<|unk|>``=2, the digits
    ``0``-``9`` = 3-12, ``+`` = 13, ``=`` = 14; decoding concatenates."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + SYMBOLS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    return wrap(raw, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=UNK)


def split_of(a: int, b: int) -> str:
    """The split the operand pair ``(a, b)`` belongs to: "test" for ``TEST_PERCENT`` % of
    pairs by a CRC-32 of ``"a+b"``, else "train"."""
    return "test" if zlib.crc32(f"{a}+{b}".encode()) % 100 < TEST_PERCENT else "train"


def answer_of(prompt: str) -> str | None:
    """The canonical answer of an ``"a+b="`` prompt (``str(a + b)``), None if malformed."""
    match = PROMPT.match(prompt.strip())
    return None if match is None else str(int(match[1]) + int(match[2]))


def is_correct(prompt: str, response: str) -> bool:
    """Whether ``response`` (up to an EOS text, if any; whitespace stripped) is exactly the
    canonical answer of ``prompt``. A decoded response carries no EOS (``decode_rows`` drops
    special tokens), so this text path cannot see a missing EOS; the token path can."""
    answer = answer_of(prompt)
    return answer is not None and response.split(EOS)[0].strip() == answer


def _place_values(keep: jax.Array) -> jax.Array:
    """``10 ** (kept positions to the right)`` at each position: the place value of a digit
    in the number the kept positions of a row spell. [B, T] int32"""
    keep = keep.astype(jnp.int32)
    right = jnp.cumsum(keep[:, ::-1], axis=1)[:, ::-1] - keep
    return jnp.where(keep == 1, 10 ** jnp.minimum(right, 9), 0)


class ArithmeticTask:
    """``a+b=`` -> the digits of ``a + b``, for ``digits``-digit operands (see module
    docstring)."""

    name = "arithmetic"
    gold_is_logit = False
    gold_is_accuracy = True

    def __init__(self, digits: int = 2):
        self.digits = digits
        self.tokenizer = char_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self._digit0, self._plus, self._equals = vocab["0"], vocab["+"], vocab["="]
        self._eos = self.tokenizer.eos_token_id

    # -- sampling ---------------------------------------------------------------------
    def _pairs(self, n: int, seed: int, split: str) -> list[tuple[int, int]]:
        """``n`` operand pairs of ``split``, uniform over that split's pairs."""
        check_split(split)
        rng = np.random.default_rng([seed, 17])
        out: list[tuple[int, int]] = []
        while len(out) < n:
            a, b = (int(x) for x in rng.integers(0, 10 ** self.digits, size=2))
            if split_of(a, b) == split:
                out.append((a, b))
        return out

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        return [f"{a}+{b}=" for a, b in self._pairs(n, seed, split)]

    def demonstrations(self, n: int, seed: int, split: str = "train") -> list[dict[str, str]]:
        """``{"prompt": "a+b=", "completion": str(a + b)}`` (no EOS text)."""
        return [{"prompt": f"{a}+{b}=", "completion": str(a + b)}
                for a, b in self._pairs(n, seed, split)]

    # -- gold reward ------------------------------------------------------------------
    def gold_reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """1.0 where the response is the exact answer (:func:`is_correct`), else 0.0. [n]"""
        return np.array([is_correct(p, r) for p, r in zip(prompts, responses)], np.float32)

    def _operands(self, query: jax.Array, query_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``a`` and ``b`` of left-padded ``a+b=`` prompts [B, P] -> ([B], [B]) int32."""
        pos = jnp.arange(query.shape[1])[None, :]
        plus = jnp.argmax(query == self._plus, axis=1)[:, None]
        equals = jnp.argmax(query == self._equals, axis=1)[:, None]
        digit = query - self._digit0
        is_digit = (query_mask == 1) & (digit >= 0) & (digit <= 9)
        a_digits, b_digits = is_digit & (pos < plus), is_digit & (pos > plus) & (pos < equals)
        value = lambda keep: jnp.sum(jnp.where(keep, digit, 0) * _place_values(keep), axis=1)  # noqa: E731
        return value(a_digits), value(b_digits)

    def gold_reward_from_tokens(self, query: jax.Array, query_mask: jax.Array,
                                response: jax.Array, response_mask: jax.Array) -> jax.Array:
        """The same reward from token ids; pure jnp, jittable. The expected response is the
        answer's digit tokens then EOS; the reward is 1.0 where the response's first
        ``len(answer) + 1`` tokens are exactly those (and real), else 0.0.
        query/query_mask [B, P] left-padded, response/response_mask [B, T] -> [B]."""
        a, b = self._operands(query, query_mask)
        answer = a + b                                                   # [B]
        length = 1 + sum((answer >= 10 ** i).astype(jnp.int32)          # answer's digits
                         for i in range(1, self.digits + 1))            # [B]
        pos = jnp.arange(response.shape[1])[None, :]                     # [1, T]
        power = 10 ** jnp.clip(length[:, None] - 1 - pos, 0, 9)          # [B, T]
        expected = jnp.where(pos < length[:, None],
                             self._digit0 + (answer[:, None] // power) % 10, self._eos)
        needed = pos <= length[:, None]                                  # digits and EOS
        matches = (response == expected) & (response_mask == 1)
        fits = length < response.shape[1]                                # room for the EOS
        return (jnp.all(matches | ~needed, axis=1) & fits).astype(jnp.float32)

    unigram_entropy = completion_unigram_entropy
