"""Tokenizers: HF tokenizer directories (local, or a hub id resolved to the local Hugging
Face cache by ``jaxrlhf.hub``), byte-level BPE trained from text, and the conversions
between token lists and padded ``[batch, length]`` arrays."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import jax
import numpy as np
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxrlhf.errors import DataError, MissingInputError
from jaxrlhf.hub import resolve_hf_dir

PAD = "<|pad|>"
EOS = "<|endoftext|>"
# A HF tokenizer directory holds at least one of these (save_pretrained writes both).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


def load_tokenizer(path_or_name: str | os.PathLike, *,
                   field: str = "tokenizer") -> transformers.PreTrainedTokenizerFast:
    """A fast tokenizer from a local directory or a hub id ``org/name[@revision]`` (its
    tokenizer files, from the local Hugging Face cache or downloaded into it); ``field``
    names it in errors (``config.data.tokenizer``)."""
    path = resolve_hf_dir(os.fspath(path_or_name), field=field, weights=False)
    if not os.path.isdir(path):
        raise MissingInputError(
            f"{field}={path!r} is neither a local directory nor a hub id (org/name or "
            "org/name@revision): pass a directory written by save_pretrained")
    if not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise MissingInputError(f"tokenizer directory {path!r} holds none of {TOKENIZER_FILES}; "
                                "pass a directory written by save_pretrained")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer directory {path!r}: transformers cannot load it "
                        f"({str(e).splitlines()[0]})") from None
    if not isinstance(tok, transformers.PreTrainedTokenizerFast):
        raise DataError(f"tokenizer directory {path!r} holds a slow tokenizer only; jaxrlhf "
                        "needs a fast one (tokenizer.json)")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})  # padding is never EOS
    return tok


def wrap(tokenizer: Tokenizer, **special: str) -> transformers.PreTrainedTokenizerFast:
    """Wrap a raw ``tokenizers.Tokenizer`` with pad/eos/bos/unk names and the chat template."""
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *,
                        min_frequency: int = 2) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` with ``<|pad|>`` (id 0) and ``<|endoftext|>``
    (eos and bos, id 1); pad is distinct from EOS (docs/design.md, PPO detail 1)."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return wrap(raw, pad_token=PAD, eos_token=EOS, bos_token=EOS)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists into ``(ids, mask)``, each [batch, length] int32; a longer list
    keeps its last ``length`` tokens. ``length`` None: the longest list's (at least 1, so
    that all-empty prompts still make a generation batch)."""
    length = length or max(1, max((len(s) for s in sequences), default=0))
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        seq = list(seq)[-length:]
        if seq:
            ids[row, length - len(seq):] = seq
            mask[row, length - len(seq):] = 1
    return ids, mask


def encode_prompts(tokenizer, prompts: Sequence[str],
                   length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Text prompts as left-padded ``(ids, mask)`` [batch, length] (see :func:`left_pad`)."""
    return left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id, length)


def decode_rows(tokenizer, tokens, mask) -> list[str]:
    """Decode each row of ``tokens`` [batch, length] where ``mask`` is 1, special tokens
    dropped (arrays on any device are fetched first)."""
    tokens, mask = jax.device_get((tokens, mask))
    return [tokenizer.decode([t for t, m in zip(row, keep) if m], skip_special_tokens=True)
            for row, keep in zip(tokens, mask)]
