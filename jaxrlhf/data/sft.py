"""SFT data: ``{prompt, completion}`` examples from records, tokenized into right-padded
rows with a response mask."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.records import Record


def example_from_row(row: dict, origin: str, tokenizer=None) -> dict[str, str]:
    """``{prompt, completion}`` from a prompt/completion row or a chat ``messages`` row."""
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return {"prompt": row["prompt"], "completion": row["completion"]}
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if not (isinstance(last, dict) and last.get("role") == "assistant"
                and isinstance(last.get("content"), str)):
            raise ValueError(f"{origin}: the last chat message must be an assistant turn "
                             f"with string content")
        if tokenizer is None:
            raise ValueError(f"{origin}: chat rows need a tokenizer with a chat template")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                               add_generation_prompt=True)
        return {"prompt": prompt, "completion": last["content"]}
    raise ValueError(f"{origin}: an SFT row needs string 'prompt' and 'completion' fields or "
                     f"a chat 'messages' list; got keys {sorted(row)}")


def sft_examples(records: Sequence[Record], tokenizer=None) -> list[dict[str, str]]:
    """Examples from ``(origin, row)`` records; a malformed row names its origin."""
    return [example_from_row(row, origin, tokenizer) for origin, row in records]


@dataclasses.dataclass
class SFTStats:
    """What tokenization did: examples in, and how many were truncated to ``max_len``."""
    examples: int = 0
    truncated: int = 0
    prompt_truncated: int = 0

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
    for _, row in records:
        if "messages" in row:
            texts.extend(str(m.get("content", "")) for m in row["messages"])
        else:
            texts.append(str(row.get("prompt", "")) + str(row.get("completion", "")))
    return texts
