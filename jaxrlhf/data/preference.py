"""Preference pairs: TRL-style rows, Anthropic HH dialogues, and gold-labelled pairs.

Every pair becomes right-padded ``[prompt][response][EOS][pad...]`` rows for the chosen and
the rejected response, so a reward model scores both at their EOS, the last real token
(docs/design.md, PPO detail 6).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxrlhf.data.records import describe
from jaxrlhf.errors import DataError

HH_ASSISTANT = "\n\nAssistant:"
LABEL_MODES = ("bradley_terry", "max")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    origin: str = ""  # "file:line" for error messages


@dataclasses.dataclass
class PairStats:
    """What the truncation policy did; printed by the trainer and saved in the workdir
    (``counts()``). Pairs with an empty (or whitespace-only) prompt or response are kept
    and counted."""
    pairs_in: int = 0
    truncated: int = 0
    identical_dropped: int = 0
    empty_prompt: int = 0
    empty_response: int = 0

    def report(self) -> str:
        return (f"{self.pairs_in} pairs: {self.truncated} truncated, "
                f"{self.identical_dropped} dropped because chosen == rejected")

    def counts(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def split_hh_dialogue(chosen: str, rejected: str, origin: str = "") -> tuple[str, str, str]:
    """Split an Anthropic HH pair of whole dialogues into (prompt, chosen, rejected).

    The prompt is the dialogues' longest common prefix, cut back to its last
    ``"\\n\\nAssistant:"`` (marker included); the responses are what follows. For a
    well-formed pair that is exactly "everything up to the last Assistant turn"; for the
    few HH rows whose dialogues already diverge in an earlier turn it is the shared part,
    as TRL's ``extract_prompt`` does.
    """
    shared = 0
    limit = min(len(chosen), len(rejected))
    while shared < limit and chosen[shared] == rejected[shared]:
        shared += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)  # the marker lies wholly in the shared part
    if cut < 0:
        raise DataError(f"{origin}: HH dialogues share no {HH_ASSISTANT!r} turn; a pair "
                         "needs a common prompt ending in an Assistant turn")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _margin(row: dict, origin: str) -> float:
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin):
        raise DataError(f"{origin}: field 'margin' must be a finite number, got "
                        f"{describe(margin)}")
    return float(margin)


def pair_from_row(row: dict, origin: str) -> PreferencePair:
    """A TRL row ``{prompt, chosen, rejected[, margin]}`` or an HH row ``{chosen, rejected}``
    (strings; ``margin`` a finite number). Anything else is a DataError naming the field."""
    if not isinstance(row, dict):
        raise DataError(f"{origin}: a preference row must be a JSON object, got "
                        f"{describe(row)}")
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError(f"{origin}: a preference row needs 'chosen' and 'rejected' (and "
                            f"optionally 'prompt', 'margin'); '{field}' is missing (keys: "
                            f"{sorted(row)})")
    for field in ("prompt", "chosen", "rejected"):
        if field in row and not isinstance(row[field], str):
            raise DataError(f"{origin}: field '{field}' must be a string, got "
                            f"{describe(row[field])}")
    chosen, rejected, margin = row["chosen"], row["rejected"], _margin(row, origin)
    if "prompt" in row:
        return PreferencePair(row["prompt"], chosen, rejected, margin, origin)
    return PreferencePair(*split_hh_dialogue(chosen, rejected, origin), margin, origin)


def prompt_tokens(tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """The last ``limit`` tokens of a prompt, and whether it was cut."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[len(ids) - min(len(ids), limit):], len(ids) > limit


def response_tokens(tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """The first ``limit`` tokens of a response, and whether it was cut."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:limit], len(ids) > limit


def padded_rows(seqs: Sequence[list[int]], length: int, pad: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Token lists right-padded to ``length``: ids and mask, each [rows, length] int32."""
    ids = np.full((len(seqs), length), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer, *, max_prompt_tokens: int,
                   max_response_tokens: int) -> tuple[dict[str, np.ndarray], PairStats]:
    """Right-padded token arrays for the pairs, after the truncation policy.

    Prompts keep their last ``max_prompt_tokens`` tokens; responses their first
    ``max_response_tokens``; EOS follows every response. A pair whose two rows are identical
    after truncation carries no preference and is dropped (and counted).
    Returns ``chosen_ids, chosen_mask, rejected_ids, rejected_mask`` [pairs, seq] int32,
    ``margin`` [pairs] float32, ``prompt_length`` [pairs] int32 (the prompt tokens both
    rows start with; the response and its EOS follow), and the stats.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    length = max_prompt_tokens + max_response_tokens + 1
    stats = PairStats(pairs_in=len(pairs))
    rows: dict[str, list] = {"chosen": [], "rejected": [], "margin": [], "prompt_length": []}
    for pair in pairs:
        stats.empty_prompt += not pair.prompt.strip()
        stats.empty_response += not (pair.chosen.strip() and pair.rejected.strip())
        prompt, cut_prompt = prompt_tokens(tokenizer, pair.prompt, max_prompt_tokens)
        chosen, cut_c = response_tokens(tokenizer, pair.chosen, max_response_tokens)
        rejected, cut_r = response_tokens(tokenizer, pair.rejected, max_response_tokens)
        stats.truncated += cut_prompt or cut_c or cut_r
        if chosen == rejected:
            stats.identical_dropped += 1
            continue
        rows["chosen"].append(prompt + chosen + [eos])
        rows["rejected"].append(prompt + rejected + [eos])
        rows["margin"].append(pair.margin)
        rows["prompt_length"].append(len(prompt))
    out = {"margin": np.asarray(rows["margin"], np.float32),
           "prompt_length": np.asarray(rows["prompt_length"], np.int32)}
    for side in ("chosen", "rejected"):
        out[f"{side}_ids"], out[f"{side}_mask"] = padded_rows(rows[side], length, pad)
    return out, stats


@dataclasses.dataclass
class LabelStats:
    """What labelling did: the candidate pairs it compared, those whose gold rewards tie
    exactly, and the ties it dropped (``max`` drops every tie; a Bradley–Terry draw labels
    a tie by a fair coin, as the model says)."""
    candidates: int = 0
    ties: int = 0
    ties_dropped: int = 0

    def report(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def prompt_pairs(samples: int, pairs_per_prompt: int, rng: np.random.Generator) -> list:
    """Which of ``samples`` responses to one prompt are compared: every pair ``(i, j)``,
    ``i < j`` (``pairs_per_prompt`` 0), or that many of them at random, in order."""
    every = list(itertools.combinations(range(samples), 2))
    if not pairs_per_prompt or pairs_per_prompt >= len(every):
        return every
    return [every[k] for k in sorted(rng.choice(len(every), pairs_per_prompt, replace=False))]


def label_by_scores(g_a: np.ndarray, g_b: np.ndarray, rng: np.random.Generator, *,
                    mode: str, temperature: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, LabelStats]:
    """Which response of each candidate pair ``(a, b)`` is preferred, from their scores
    ``g_a``, ``g_b`` [pairs]: ``keep`` [pairs] (False for a dropped tie), ``a_wins``
    [pairs] and the counts. ``"max"`` prefers the larger score and drops exact ties;
    ``"bradley_terry"`` draws P(a preferred) = sigmoid((g_a - g_b) / temperature)
    (Bradley & Terry 1952; Christiano et al. 2017, eq. 1), a tie by a fair coin."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode {mode!r} is not one of {LABEL_MODES}")
    stats = LabelStats(candidates=len(g_a), ties=int((g_a == g_b).sum()))
    if mode == "max":
        stats.ties_dropped = stats.ties
        return g_a != g_b, g_a > g_b, stats
    a_wins = rng.random(len(g_a)) < 1.0 / (1.0 + np.exp(-(g_a - g_b) / temperature))
    return np.ones(len(g_a), bool), a_wins, stats


def gold_labelled_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                        gold_reward: Callable[[list[str], list[str]], np.ndarray],
                        rng: np.random.Generator, *, mode: str = "bradley_terry",
                        temperature: float = 1.0, pairs_per_prompt: int = 0
                        ) -> tuple[list[PreferencePair], LabelStats]:
    """Label pairs of responses by a programmatic gold reward; ``responses[k][i]`` is the
    k-th response to ``prompts[i]``.

    Each prompt's K responses give the pairs of :func:`prompt_pairs` — every one of the
    K(K-1)/2, as in the preference data of Rafailov et al. (2023, §6.1: 4 samples, 6 pairs)
    — each labelled by ``mode`` (:func:`label_by_scores`): ``"max"`` prefers the larger
    gold score (exact ties are dropped and counted); ``"bradley_terry"`` draws the label
    with P(a preferred) = sigmoid((g_a - g_b) / temperature) on the gold reward's own
    scale. The gold difference ``g_chosen - g_rejected`` is kept as the pair's ``margin``
    (negative where a Bradley–Terry draw preferred the lower-scoring response).
    """
    prompts = list(prompts)
    gold = np.stack([np.asarray(gold_reward(prompts, list(r)), np.float64)
                     for r in responses])                                   # [K, prompts]
    which = [(i, a, b) for i in range(len(prompts))
             for a, b in prompt_pairs(len(responses), pairs_per_prompt, rng)]
    g_a = np.array([gold[a, i] for i, a, _ in which])
    g_b = np.array([gold[b, i] for i, _, b in which])
    keep, a_wins, stats = label_by_scores(g_a, g_b, rng, mode=mode, temperature=temperature)
    pairs = []
    for n in np.flatnonzero(keep):
        i, a, b = which[n]
        first, second = responses[a][i], responses[b][i]
        chosen, rejected = (first, second) if a_wins[n] else (second, first)
        margin = (g_a[n] - g_b[n]) * (1 if a_wins[n] else -1)
        pairs.append(PreferencePair(prompts[i], chosen, rejected, float(margin),
                                    f"gold:{i}:{a}-{b}"))
    return pairs, stats


def pairs_from_records(records: Iterable[tuple[str, dict]]) -> list[PreferencePair]:
    """Parse ``(origin, row)`` records into pairs; a malformed row names its origin."""
    return [pair_from_row(row, origin) for origin, row in records]
