"""Sequence packing for causal-LM pretraining: documents joined into full rows, no padding.

The documents' tokens are joined into one stream with an EOS after each document, and the
stream is cut into non-overlapping rows of exactly ``seq_len`` tokens; the final incomplete
row is dropped (and counted). Every kept token appears exactly once, in order.

``segment_ids`` number the documents within each row 1, 2, 3, ... (restarting at 1 in each
row; a document cut across two rows has a part in each). Passed as the model's
``attention_mask`` (``jaxrlhf.models.transformer``), they block attention across document
boundaries, and ``jaxrlhf.scoring.positions_from_mask`` then restarts positions at 0 at each
document (:func:`segment_positions`), as Llama 3 was trained ("The Llama 3 Herd of Models",
2024, §3.2). Passing ``segment_ids > 0`` instead gives plain causal attention over the whole
row, documents told apart only by the EOS between them, as GPT-3 was trained (Brown et al.
2020, appendix B).

The loss (``jaxrlhf.losses.lm_nll``) is next-token NLL: position ``t`` predicts token
``t + 1`` of the same row, so each row's first token is context only. :func:`loss_mask` says
which targets count, :func:`lm_arrays` makes the ``{input_ids, attention_mask, loss_mask}``
arrays ``lm_nll`` and ``BatchIterator`` take.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.errors import DataError


@dataclasses.dataclass
class PackStats:
    """What packing did, in counts (``report()`` for the run's logs)."""
    documents: int = 0        # documents given, empty ones included
    empty_documents: int = 0  # of those, without tokens: skipped (no EOS either)
    tokens: int = 0           # the stream: every document token plus one EOS each
    rows: int = 0             # full rows of seq_len tokens
    dropped_tokens: int = 0   # the final incomplete row's tokens, left out

    def report(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class PackedRows(dict):
    """A ``dict[str, np.ndarray]`` of [rows, seq_len] int32 arrays, with ``.stats``
    attached so it can be passed straight to :class:`~jaxrlhf.data.iterator.BatchIterator`
    (to ``jax.jit`` as ``dict(rows)``: this class is no pytree)."""
    stats: PackStats


def pack_documents(docs: Sequence[Sequence[int]], eos_id: int, seq_len: int) -> PackedRows:
    """``input_ids`` and ``segment_ids`` [rows, seq_len] int32 of ``docs`` packed into rows.

    ``docs`` are token-id lists without special tokens (``tokenizer(texts,
    add_special_tokens=False)["input_ids"]``); an EOS ``eos_id`` follows each non-empty one.
    The stream is cut into ``len(stream) // seq_len`` rows; the rest is dropped. Raises
    DataError when the documents fill no row.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: a row needs at least 2 tokens (a context and "
                         "a target)")
    kept = [np.asarray(d, np.int32) for d in docs if len(d)]
    stats = PackStats(documents=len(docs), empty_documents=len(docs) - len(kept))
    lengths = np.array([len(d) + 1 for d in kept], np.int64)            # + EOS
    stats.tokens = int(lengths.sum())
    stats.rows, stats.dropped_tokens = divmod(stats.tokens, seq_len)
    if not stats.rows:
        raise DataError(f"{len(kept)} non-empty documents make {stats.tokens} tokens (EOS "
                        f"included), fewer than one row of seq_len={seq_len}; give more "
                        "text or a shorter seq_len")
    eos = np.array([eos_id], np.int32)
    stream = np.concatenate([part for d in kept for part in (d, eos)])   # [tokens]
    doc_index = np.repeat(np.arange(len(kept), dtype=np.int32), lengths)  # [tokens]
    n = stats.rows * seq_len
    input_ids = stream[:n].reshape(stats.rows, seq_len)
    doc_index = doc_index[:n].reshape(stats.rows, seq_len)
    # every document has >= 1 token, so the documents in a row are consecutive indices
    segment_ids = doc_index - doc_index[:, :1] + 1                      # [rows, seq_len]
    rows = PackedRows(input_ids=input_ids, segment_ids=segment_ids.astype(np.int32))
    rows.stats = stats
    return rows


def segment_positions(segment_ids: jax.Array | np.ndarray) -> jax.Array:
    """Position ids [batch, seq] int32 of rows of segment ids (0 = padding): each real token's
    count of the real tokens before it in its segment, so positions restart at 0 where a
    segment starts. A segment starts at a real token whose id differs from that of the
    previous real token (padding in between does not start one); a padding token gets the
    position the next real token of the segment before it would have.

    On a 0/1 attention mask (one segment) this is ``cumsum(mask) - mask`` exactly, the
    position ids of left- or right-padded rows.
    """
    seg = jnp.asarray(segment_ids).astype(jnp.int32)                     # [batch, seq]
    axis = seg.ndim - 1
    real = (seg > 0).astype(jnp.int32)
    before = jnp.cumsum(real, axis=axis) - real              # real tokens before t
    index = jnp.where(seg > 0, jnp.arange(seg.shape[axis]), -1)
    last_real = jax.lax.cummax(index, axis=axis)             # the last real token, t incl.
    filled = jnp.where(last_real >= 0,                       # ... and its segment id
                       jnp.take_along_axis(seg, jnp.maximum(last_real, 0), axis=axis), 0)
    previous = jnp.pad(filled[..., :-1], [(0, 0)] * axis + [(1, 0)])  # strictly before t
    start = (seg > 0) & (seg != previous)
    return before - jax.lax.cummax(jnp.where(start, before, 0), axis=axis)


def loss_mask(segment_ids: np.ndarray, cross_document: bool) -> np.ndarray:
    """1 on the target tokens [rows, seq_len] int32 the pretraining loss counts, 0 elsewhere.

    Token ``t >= 1`` is predicted at position ``t - 1``; it counts when both are real
    (segment > 0) and, unless ``cross_document``, in the same segment. Column 0 is always 0:
    a row's first token is context only. So:

    - ``cross_document=True`` (plain causal attention over the row): every token but the
      first of each row counts, the first token of a document included (predicted from the
      EOS ending the one before) — ``rows * (seq_len - 1)`` targets in a packed batch.
    - ``cross_document=False`` (segment-masked attention): a document's first token is not
      predicted (its context would be another document, which it cannot see), so the loss
      is exactly the sum of the losses of each document part run alone. Each EOS still
      counts as the target that ends its document.
    """
    seg = np.asarray(segment_ids)
    context, target = seg[:, :-1], seg[:, 1:]
    counted = (context > 0) & (target > 0) & (cross_document | (context == target))
    return np.pad(counted, ((0, 0), (1, 0))).astype(np.int32)


def lm_arrays(rows: PackedRows, cross_document: bool) -> PackedRows:
    """The arrays of ``jaxrlhf.losses.lm_nll``: ``input_ids``, ``attention_mask`` (the
    segment ids, or ``segment_ids > 0`` when ``cross_document``) and :func:`loss_mask`, each
    [rows, seq_len] int32, with the packing's ``.stats``.

    Count a batch's tokens as ``attention_mask > 0``, not its sum (segment ids exceed 1).
    """
    seg = rows["segment_ids"]
    arrays = PackedRows(input_ids=rows["input_ids"],
                        attention_mask=(seg > 0).astype(np.int32) if cross_document else seg,
                        loss_mask=loss_mask(seg, cross_document))
    arrays.stats = rows.stats
    return arrays
