"""SFT data: ``{prompt, completion}`` examples from records, tokenized into right-padded
rows with a response mask.

A row is either ``{"prompt": str, "completion": str}`` or a chat row ``{"messages": [{"role":
str, "content": str}, ...]}`` ending in an assistant turn (other keys are ignored). Anything
else is a ``DataError`` naming the row's file and line and the field.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.records import Record, describe
from jaxrlhf.errors import DataError

PLAIN_FIELDS = ("prompt", "completion")


def _chat_messages(messages, origin: str) -> list[dict]:
    """``messages`` checked: a list of ``{role: str, content: str}`` ending in an assistant
    turn that follows at least one other message."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: field 'messages' must be a non-empty list of "
                        f"{{'role', 'content'}} objects, got {describe(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{origin}: field 'messages[{i}]' must be an object with string "
                            f"'role' and 'content', got {describe(message)}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise DataError(f"{origin}: field 'messages[{i}].{key}' must be a string, got "
                                f"{describe(message.get(key)) if key in message else 'nothing'}")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{origin}: field 'messages[{len(messages) - 1}].role' is "
                        f"{messages[-1]['role']!r}, but the last message must be the "
                        "assistant turn to learn")
    if len(messages) < 2:
        raise DataError(f"{origin}: field 'messages' holds only the assistant turn; a chat "
                        "row needs at least one message before it (the prompt)")
    return messages


def _checked(row: dict, origin: str) -> tuple[str, str] | list[dict]:
    """A row's ``(prompt, completion)``, or its checked chat messages."""
    if "messages" in row:
        if any(field in row for field in PLAIN_FIELDS):
            raise DataError(f"{origin}: a row has either 'prompt' and 'completion' or "
                            "'messages', not both; keep one layout")
        return _chat_messages(row["messages"], origin)
    for field in PLAIN_FIELDS:
        if field not in row:
            raise DataError(f"{origin}: an SFT row needs string fields 'prompt' and "
                            f"'completion' (or a chat 'messages' list); '{field}' is missing "
                            f"(keys: {sorted(row)})")
        if not isinstance(row[field], str):
            raise DataError(f"{origin}: field '{field}' must be a string, got "
                            f"{describe(row[field])}")
    return row["prompt"], row["completion"]


def example_from_row(row: dict, origin: str, tokenizer=None) -> dict[str, str]:
    """``{prompt, completion}`` from a prompt/completion row or a chat ``messages`` row (whose
    prompt is the tokenizer's chat template applied to all but the last message)."""
    checked = _checked(row, origin)
    if isinstance(checked, tuple):
        return {"prompt": checked[0], "completion": checked[1]}
    if tokenizer is None:
        raise DataError(f"{origin}: chat rows need a tokenizer with a chat template")
    try:
        prompt = tokenizer.apply_chat_template(checked[:-1], tokenize=False,
                                               add_generation_prompt=True)
    except Exception as e:  # a template's own checks (roles, alternation) raise anything
        raise DataError(f"{origin}: the tokenizer's chat template rejects these messages "
                        f"({type(e).__name__}: {e})") from None
    return {"prompt": prompt, "completion": checked[-1]["content"]}


def sft_examples(records: Sequence[Record], tokenizer=None) -> list[dict[str, str]]:
    """Examples from ``(origin, row)`` records; a malformed row names its origin."""
    return [example_from_row(row, origin, tokenizer) for origin, row in records]


@dataclasses.dataclass
class SFTStats:
    """What tokenization did: examples in, how many were truncated to ``max_len``, and how
    many had an empty (or whitespace-only) prompt or completion (kept: an empty completion
    teaches the EOS alone)."""
    examples: int = 0
    truncated: int = 0
    prompt_truncated: int = 0
    empty_prompt: int = 0
    empty_completion: int = 0

    def report(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class SFTArrays(dict):
    """A ``dict[str, np.ndarray]`` of equal-length arrays, with ``.stats`` attached so
    it can be passed straight to :class:`~jaxrlhf.data.iterator.BatchIterator`."""
    stats: SFTStats


def _row(prompt_ids: list[int], completion_ids: list[int], eos: int, max_len: int,
         stats: SFTStats) -> tuple[list[int], int]:
    """``[prompt][completion][EOS]`` cut to ``max_len`` (response end first), and the
    number of prompt tokens kept."""
    response = completion_ids + [eos]
    if len(prompt_ids) + len(response) > max_len:
        stats.truncated += 1
        if len(prompt_ids) >= max_len:  # keep the prompt's end and one response token
            stats.prompt_truncated += 1
            prompt_ids = prompt_ids[len(prompt_ids) - (max_len - 1):]
    return (prompt_ids + response)[:max_len], len(prompt_ids)


def tokenize_sft(examples: Sequence[dict], tokenizer, max_len: int) -> SFTArrays:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` [N, max_len] int32.

    ``loss_mask`` is 1 exactly on completion tokens and the appended EOS; the trainer
    predicts ``input_ids[:, 1:]`` from ``logits[:, :-1]`` weighted by ``loss_mask[:, 1:]``.
    Padding uses ``tokenizer.pad_token_id``, which must differ from EOS.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None or eos is None or pad == eos:
        raise ValueError(f"tokenizer needs distinct pad and eos ids (pad={pad}, eos={eos})")
    n = len(examples)
    arrays = SFTArrays(input_ids=np.full((n, max_len), pad, np.int32),
                       attention_mask=np.zeros((n, max_len), np.int32),
                       loss_mask=np.zeros((n, max_len), np.int32))
    arrays.stats = stats = SFTStats(examples=n)
    for i, ex in enumerate(examples):
        stats.empty_prompt += not ex["prompt"].strip()
        stats.empty_completion += not ex["completion"].strip()
        p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"]
        ids, n_prompt = _row(p, c, eos, max_len, stats)
        arrays["input_ids"][i, :len(ids)] = ids
        arrays["attention_mask"][i, :len(ids)] = 1
        arrays["loss_mask"][i, n_prompt:len(ids)] = 1
    return arrays


def record_texts(records: Sequence[Record]) -> list[str]:
    """The raw text of SFT rows of either layout (for training a tokenizer on them)."""
    texts = []
    for origin, row in records:
        checked = _checked(row, origin)
        if isinstance(checked, tuple):
            texts.append(checked[0] + checked[1])
        else:
            texts.extend(m["content"] for m in checked)
    return texts
