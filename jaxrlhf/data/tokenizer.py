"""Tokenizers: local HF tokenizer directories and byte-level BPE trained from text."""
from __future__ import annotations

import os
from collections.abc import Iterable

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD = "<|pad|>"
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


def load_tokenizer(path_or_name: str | os.PathLike) -> transformers.PreTrainedTokenizerFast:
    """A fast tokenizer from a local directory; hub ids fail fast (no network is assumed)."""
    path = os.fspath(path_or_name)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"tokenizer {path!r} is not a local directory; jaxrlhf runs offline, so download "
            f"it first (e.g. `huggingface-cli download {path} --local-dir DIR`) and pass DIR")
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not isinstance(tok, transformers.PreTrainedTokenizerFast):
        raise TypeError(f"tokenizer at {path!r} is not a fast tokenizer")
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
    (eos and bos, id 1); pad is distinct from EOS (PPO_DETAILS item 1)."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return wrap(raw, pad_token=PAD, eos_token=EOS, bos_token=EOS)
