"""Unpaired examples — a completion labelled desirable or not — for KTO.

From TRL-style ``{prompt, completion, label}`` rows (``label`` a boolean: true is
desirable), from preference pairs by TRL's ``unpair_preference_dataset`` conversion (the
chosen response desirable, the rejected one undesirable), or from gold-scored samples
labelled by a threshold. Every example becomes a right-padded ``[prompt][completion][EOS]``
row and a *mismatched* row ``[prompt][another example's completion][EOS]``, from which KTO
estimates its reference point (``jaxrlhf.losses.kto_reference_point``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxrlhf.data.preference import (pair_from_row, padded_rows, prompt_tokens,
                                     response_tokens)
from jaxrlhf.data.records import describe
from jaxrlhf.errors import DataError


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    prompt: str
    completion: str
    desirable: bool
    origin: str = ""  # "file:line" for error messages


def example_from_row(row: dict, origin: str) -> UnpairedExample:
    """A row ``{prompt, completion, label}`` (strings; ``label`` true or false). Anything
    else is a DataError naming the field."""
    if not isinstance(row, dict):
        raise DataError(f"{origin}: an unpaired row must be a JSON object, got "
                        f"{describe(row)}")
    for field in ("prompt", "completion", "label"):
        if field not in row:
            raise DataError(f"{origin}: an unpaired (KTO) row needs 'prompt', 'completion' and "
                            f"'label' (true: desirable, false: undesirable), or is a "
                            f"preference pair with 'chosen' and 'rejected'; '{field}' is "
                            f"missing (keys: {sorted(row)})")
    for field in ("prompt", "completion"):
        if not isinstance(row[field], str):
            raise DataError(f"{origin}: field '{field}' must be a string, got "
                            f"{describe(row[field])}")
    if not isinstance(row["label"], bool):
        raise DataError(f"{origin}: field 'label' must be true or false, got "
                        f"{describe(row['label'])}")
    return UnpairedExample(row["prompt"], row["completion"], row["label"], origin)


def examples_from_records(records: Iterable[tuple[str, dict]]) -> list[UnpairedExample]:
    """Parse ``(origin, row)`` records into examples: ``{prompt, completion, label}`` rows
    as they are, and preference pairs (rows with ``chosen`` and ``rejected`` but no
    ``completion``: TRL or HH, ``jaxrlhf.data.preference.pair_from_row``) as TRL's
    conversion makes them — every pair's chosen response desirable, then every pair's
    rejected response undesirable, so that neighbouring examples answer different prompts.
    A malformed row names its origin."""
    examples, rejected = [], []
    for origin, row in records:
        if isinstance(row, dict) and "completion" not in row and {"chosen", "rejected"} <= set(row):
            pair = pair_from_row(row, origin)
            examples.append(UnpairedExample(pair.prompt, pair.chosen, True, origin))
            rejected.append(UnpairedExample(pair.prompt, pair.rejected, False, origin))
        else:
            examples.append(example_from_row(row, origin))
    return examples + rejected


def gold_labelled_examples(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                           gold_reward: Callable[[list[str], list[str]], np.ndarray],
                           threshold: float | None) -> tuple[list[UnpairedExample], float]:
    """Label each response by its gold reward: desirable when the gold exceeds
    ``threshold`` (None: the median of these golds, so about half are desirable; a gold
    equal to the threshold is undesirable). ``responses[k][i]`` is the k-th response to
    ``prompts[i]``; the examples come response by response (all first responses, then all
    second ones, ...), so neighbours answer different prompts. Returns the examples and
    the threshold."""
    prompts = list(prompts)
    gold = np.stack([np.asarray(gold_reward(prompts, list(r)), np.float64)
                     for r in responses])                                   # [K, prompts]
    threshold = float(np.median(gold)) if threshold is None else float(threshold)
    examples = [UnpairedExample(prompts[i], responses[k][i], bool(gold[k, i] > threshold),
                                f"gold:{i}:{k}")
                for k in range(len(responses)) for i in range(len(prompts))]
    return examples, threshold


@dataclasses.dataclass
class UnpairedStats:
    """What the truncation policy did, and the mismatched rows whose other completion
    answers the same prompt text (they estimate KTO's reference point less well; keep
    neighbouring rows of a file on different prompts). Printed and saved like
    ``preference.PairStats``."""
    examples_in: int = 0
    truncated: int = 0
    desirable: int = 0
    empty_prompt: int = 0
    empty_response: int = 0
    mismatched_same_prompt: int = 0

    def report(self) -> str:
        return (f"{self.examples_in} examples ({self.desirable} desirable): "
                f"{self.truncated} truncated")

    def counts(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def tokenize_unpaired(examples: Sequence[UnpairedExample], tokenizer, *,
                      max_prompt_tokens: int, max_response_tokens: int
                      ) -> tuple[dict[str, np.ndarray], UnpairedStats]:
    """Right-padded token arrays for the examples, after the truncation policy of
    ``preference.tokenize_pairs`` (prompts keep their last ``max_prompt_tokens`` tokens,
    completions their first ``max_response_tokens``, EOS after each).

    The mismatched row of example i is its prompt followed by the completion of example
    i - 1 (the last example's for the first), as TRL's ``KTOTrainer`` shifts completions by
    one. Returns ``completion_ids, completion_mask, kl_ids, kl_mask`` [examples, seq]
    int32, ``prompt_length`` [examples] int32 (both rows start with the prompt),
    ``desirable`` [examples] float32 (1.0 or 0.0), and the stats.
    """
    if len(examples) < 2:
        raise DataError(f"{len(examples)} unpaired example(s): KTO needs at least 2, to pair "
                        "each prompt with another example's completion")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stats = UnpairedStats(examples_in=len(examples))
    prompts, completions = [], []
    for e in examples:
        stats.empty_prompt += not e.prompt.strip()
        stats.empty_response += not e.completion.strip()
        stats.desirable += e.desirable
        prompt, cut_prompt = prompt_tokens(tokenizer, e.prompt, max_prompt_tokens)
        completion, cut = response_tokens(tokenizer, e.completion, max_response_tokens)
        stats.truncated += cut_prompt or cut
        prompts.append(prompt)
        completions.append(completion + [eos])
    other = [len(examples) - 1, *range(len(examples) - 1)]                 # i -> i - 1
    stats.mismatched_same_prompt = sum(examples[i].prompt == examples[j].prompt
                                       for i, j in enumerate(other))
    length = max_prompt_tokens + max_response_tokens + 1
    out = {"prompt_length": np.asarray([len(p) for p in prompts], np.int32),
           "desirable": np.asarray([e.desirable for e in examples], np.float32)}
    out["completion_ids"], out["completion_mask"] = padded_rows(
        [p + c for p, c in zip(prompts, completions)], length, pad)
    out["kl_ids"], out["kl_mask"] = padded_rows(
        [p + completions[j] for p, j in zip(prompts, other)], length, pad)
    return out, stats
