"""Pretraining data: sequence packing, segment-masked attention, the loss mask, bits per
byte and raw-text corpora, each against an independent reference (hand counts, plain
loops, documents run alone)."""
import gzip
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import full_dataset
from flax import nnx

from jaxrlhf import losses, scoring
from jaxrlhf.data import corpus, packing
from jaxrlhf.errors import DataError, MissingInputError
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM

EOS = 1


def _docs(seed, n=12, max_len=9):
    """Random documents (some empty) whose tokens are all distinct and never EOS."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len, n)
    starts = 2 + np.concatenate([[0], np.cumsum(lengths)])
    return [list(range(s, s + k)) for s, k in zip(starts, lengths)]


def _stream(docs):
    """The reference stream: each non-empty document, then EOS, in order."""
    return [t for d in docs if d for t in d + [EOS]]


def _segments(docs, seq_len):
    """Reference segment ids by a plain loop: documents numbered from 1 within each row."""
    owner = [i for i, d in enumerate(docs) if d for _ in range(len(d) + 1)]
    rows = []
    for r in range(len(owner) // seq_len):
        ids, number = [], 0
        for t in range(seq_len):
            i = owner[r * seq_len + t]
            number += t == 0 or i != owner[r * seq_len + t - 1]
            ids.append(number)
        rows.append(ids)
    return rows


# ---------------------------------------------------------------------------- packing


@pytest.mark.parametrize("seed,seq_len", [(0, 7), (1, 5), (2, 16), (1, 2)])
def test_every_token_once_in_order_with_eos_between_documents(seed, seq_len):
    docs = _docs(seed)
    rows = packing.pack_documents(docs, EOS, seq_len)
    stream = _stream(docs)
    n_rows = len(stream) // seq_len
    assert rows["input_ids"].shape == rows["segment_ids"].shape == (n_rows, seq_len)
    assert rows["input_ids"].dtype == rows["segment_ids"].dtype == np.int32
    assert rows["input_ids"].reshape(-1).tolist() == stream[:n_rows * seq_len]
    assert rows["segment_ids"].tolist() == _segments(docs, seq_len)
    empty = sum(not d for d in docs)
    assert rows.stats.report() == {
        "documents": len(docs), "empty_documents": empty, "tokens": len(stream),
        "rows": n_rows, "dropped_tokens": len(stream) - n_rows * seq_len}
    assert empty and rows.stats.dropped_tokens  # the cases under test occur


def test_a_document_cut_across_rows_has_a_part_in_each():
    rows = packing.pack_documents([[5, 6, 7], [], [8, 9], [10, 11, 12, 13], [14]], EOS, 4)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 1], [8, 9, 1, 10], [11, 12, 13, 1]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]]
    assert (rows.stats.empty_documents, rows.stats.dropped_tokens) == (1, 2)  # [14, EOS]


def test_too_little_text_for_one_row_is_a_data_error():
    with pytest.raises(DataError, match="2 non-empty documents make 6 tokens .EOS included.*seq_len=8"):
        packing.pack_documents([[3, 4], [], [5, 6]], EOS, 8)
    with pytest.raises(ValueError, match="seq_len=1"):
        packing.pack_documents([[3, 4, 5]], EOS, 1)


def test_segment_positions_restart_at_each_segment():
    seg = np.array([[1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 0, 0], [0, 1, 1, 0, 2, 2]])
    expected = [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 2], [0, 0, 1, 2, 0, 1]]
    assert packing.segment_positions(seg).tolist() == expected
    rows = packing.pack_documents(_docs(4), EOS, 6)["segment_ids"]
    reference = [[t - row.index(s) for t, s in enumerate(row)] for row in rows.tolist()]
    assert packing.segment_positions(rows).tolist() == reference


def test_positions_of_a_0_1_mask_are_unchanged():
    """``cumsum(mask) - mask``, the padded batches' position ids, on random masks with gaps."""
    masks = (np.random.default_rng(0).random((64, 11)) < 0.6).astype(np.int32)
    np.testing.assert_array_equal(scoring.positions_from_mask(jnp.asarray(masks)),
                                  np.cumsum(masks, 1) - masks)


# ---------------------------------------------------------------- segment-masked attention


def _model(family, vocab=40):
    cfg = ModelConfig.preset(family, vocab_size=vocab, d_model=32, n_layers=2, n_heads=4,
                             n_kv_heads=2 if family == "llama" else 4, d_ff=64,
                             max_seq_len=32)
    return nnx.split(CausalLM(cfg, rngs=nnx.Rngs(0)))


def _parts(segment_ids):
    """(row, start, end) of every document part in packed rows."""
    out = []
    for r, seg in enumerate(segment_ids.tolist()):
        for s in sorted(set(seg)):
            out.append((r, seg.index(s), len(seg) - seg[::-1].index(s)))
    return out


def _alone(graphdef, params, ids, parts):
    """Logits [parts, seq_len, vocab] of each part run as its own row (right-padded: under
    causal attention the padding after it changes nothing)."""
    rows = np.zeros((len(parts), ids.shape[1]), np.int32)
    mask = np.zeros_like(rows)
    for i, (r, start, end) in enumerate(parts):
        rows[i, :end - start], mask[i, :end - start] = ids[r, start:end], 1
    return _forward(graphdef, params, jnp.asarray(rows), jnp.asarray(mask))


_forward = jax.jit(scoring.forward, static_argnums=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_segment_ids_block_attention_across_documents(family):
    """A packed row's logits with segment ids as its mask are those of each document part
    run alone (positions restarting at 0); with plain causal attention they are not."""
    graphdef, params = _model(family)
    rows = packing.pack_documents([[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13], [14, 15, 16]],
                                  EOS, 8)
    ids, seg = jnp.asarray(rows["input_ids"]), jnp.asarray(rows["segment_ids"])
    packed = _forward(graphdef, params, ids, seg)
    causal = jax.jit(lambda p: nnx.merge(graphdef, p)(  # positions per document, no mask
        ids, scoring.positions_from_mask(seg), jnp.ones_like(seg))[0])(params)
    parts = _parts(rows["segment_ids"])
    alone = _alone(graphdef, params, rows["input_ids"], parts)
    later_parts = 0
    for (r, start, end), logits in zip(parts, alone):
        np.testing.assert_allclose(packed[r, start:end], logits[:end - start], atol=1e-5)
        if start > 0:  # a part after another document: it would see that one
            later_parts += 1
            assert float(jnp.abs(causal[r, start:end] - logits[:end - start]).max()) > 1e-3
    assert later_parts >= 2


# ---------------------------------------------------------------------------- loss mask


def test_loss_mask_counts_by_hand():
    seg = packing.pack_documents([[5, 6, 7], [8, 9], [10, 11, 12, 13]], EOS, 4)["segment_ids"]
    # rows [5 6 7 E] [8 9 E 10] [11 12 13 E]: 10 starts a document at row 1, column 3
    assert packing.loss_mask(seg, cross_document=True).tolist() == [[0, 1, 1, 1]] * 3
    assert packing.loss_mask(seg, cross_document=False).tolist() == [
        [0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 1]]
    padded = np.array([[1, 1, 2, 0], [0, 1, 1, 1]])
    assert packing.loss_mask(padded, True).tolist() == [[0, 1, 1, 0], [0, 0, 1, 1]]
    assert packing.loss_mask(padded, False).tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]


def test_cross_document_loss_counts_every_kept_token_but_each_rows_first_once():
    docs = _docs(5, n=20)
    rows = packing.pack_documents(docs, EOS, 7)
    arrays = packing.lm_arrays(rows, cross_document=True)
    assert arrays["attention_mask"].tolist() == np.ones_like(rows["input_ids"]).tolist()
    assert arrays["input_ids"] is rows["input_ids"] and arrays.stats is rows.stats
    assert packing.lm_arrays(rows, False)["attention_mask"] is rows["segment_ids"]
    mask = arrays["loss_mask"]
    counted = [r * 7 + t for r, t in zip(*np.nonzero(mask))]   # stream indices
    expected = [i for i in range(rows.stats.rows * 7) if i % 7]
    assert counted == expected


def test_segment_masked_loss_is_the_sum_of_each_document_part_alone():
    graphdef, params = _model("llama")
    rows = packing.pack_documents([[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13], [14, 15, 16, 17]],
                                  EOS, 8)
    arrays = packing.lm_arrays(rows, cross_document=False)
    mean, metrics = jax.jit(losses.lm_nll, static_argnums=0)(graphdef, params, dict(arrays))
    parts = _parts(rows["segment_ids"])
    reference, targets = 0.0, 0
    for (r, start, end), logits in zip(parts, _alone(graphdef, params, rows["input_ids"],
                                                      parts)):
        tokens = rows["input_ids"][r, start:end]
        logp = scoring.token_log_probs(logits[None, :end - start - 1],
                                       jnp.asarray(tokens[None, 1:]))
        reference -= float(logp.sum())
        targets += len(tokens) - 1
    assert int(metrics["tokens"]) == targets == int(arrays["loss_mask"].sum())
    np.testing.assert_allclose(float(mean) * targets, reference, rtol=1e-5)


# ------------------------------------------------------------------------- bits per byte


def test_bits_per_byte_by_hand():
    texts = ["héllo", "ab"]                  # 6 + 2 UTF-8 bytes ("é" takes two)
    assert losses.utf8_bytes(texts) == 8
    # 8 tokens at ln 4 nats = 2 bits each: 16 bits over 8 bytes
    assert losses.bits_per_byte(8 * math.log(4), losses.utf8_bytes(texts)) == pytest.approx(2.0)
    # mean loss 0.9 nats over 12 tokens of 5 bytes: 0.9 * 12 / (5 ln 2)
    assert losses.bits_per_byte(0.9 * 12, 5) == pytest.approx(3.116, abs=1e-3)
    with pytest.raises(ValueError, match="total_bytes=0"):
        losses.bits_per_byte(1.0, 0)


# ---------------------------------------------------------------------------- corpora


def test_txt_documents_are_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\n\nAll:\r\nSpeak, speak.\n \t\nFirst:\nWe know't.\n\n\n\nEnd.")
    assert corpus.load_texts(str(path), "train") == [
        "All:\nSpeak, speak.", "First:\nWe know't.", "End."]
    gz = tmp_path / "b.txt.gz"
    gz.write_bytes(gzip.compress(b"one\n\ntwo\n"))
    assert corpus.load_texts(str(gz), "train") == ["one", "two"]


def test_a_directory_holds_one_document_per_txt_file(tmp_path):
    (tmp_path / "b.txt").write_text("second\n\nstill second\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("ignored too")
    assert corpus.load_texts(str(tmp_path), "train") == ["first", "second\n\nstill second\n"]


def test_records_documents_are_their_text_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"text": "a review", "label": 1}, {"text": "another", "label": 0}]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.parquet"):
        assert corpus.load_texts(str(tmp_path / name), "train") == ["a review", "another"]
    body = tmp_path / "b.jsonl"
    body.write_text(json.dumps({"body": "x"}) + "\n")
    assert corpus.load_texts(str(body), "train", field="body") == ["x"]


def test_bad_corpora_name_what_is_wrong(tmp_path):
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: no text field 'text' \(keys: \['txt'\]"):
        corpus.load_texts(str(rows), "train")
    rows.write_text('{"text": "fine"}\n\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:3: field 'text' must be a string, got a "
                                        r"number \(3\)"):
        corpus.load_texts(str(rows), "train")
    rows.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="no text .2 documents, all empty"):
        corpus.load_texts(str(rows), "train")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    with pytest.raises(DataError, match="no text .0 documents"):
        corpus.load_texts(str(blank), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="needs .txt files"):
        corpus.load_texts(str(tmp_path / "empty"), "train")
    with pytest.raises(MissingInputError, match="no such file"):
        corpus.load_texts(str(tmp_path / "missing.txt"), "train")
    (tmp_path / "notes.md").write_text("text")
    with pytest.raises(DataError, match=r"notes\.md: unsupported file type for a corpus .*\.txt"):
        corpus.load_texts(str(tmp_path / "notes.md"), "train")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\n\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.txt:3: not UTF-8"):
        corpus.load_texts(str(latin), "train")


@full_dataset("tinyshakespeare/input.txt")
def test_tinyshakespeare_is_one_document_per_speech():
    texts = corpus.load_texts("tinyshakespeare/input.txt", "train")
    assert len(texts) == 7222
    assert texts[:2] == ["First Citizen:\nBefore we proceed any further, hear me speak.",
                         "All:\nSpeak, speak."]


def test_generated_corpus_is_deterministic_and_learnable():
    """The same seed gives the same stories; a tiny model trained on them for 50 steps
    predicts held-out stories far better than the train tokens' unigram model does."""
    import optax
    from jaxrlhf.data.tokenizer import train_bpe_tokenizer
    assert corpus.generated_corpus(5, 0) == corpus.generated_corpus(5, 0)
    assert corpus.generated_corpus(5, 0) != corpus.generated_corpus(5, 1)
    train, held = corpus.generated_corpus(300, 0), corpus.generated_corpus(30, 1)
    tok = train_bpe_tokenizer(train, 300)
    encode = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    pack = lambda texts: packing.lm_arrays(  # noqa: E731
        packing.pack_documents(encode(texts), tok.eos_token_id, 64), False)
    train_rows, held_rows = pack(train), pack(held)
    cfg = ModelConfig.preset("llama", vocab_size=len(tok), d_model=64, n_layers=2,
                             n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64)
    graphdef, params = nnx.split(CausalLM(cfg, rngs=nnx.Rngs(0)))
    opt = optax.adamw(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(lambda p: losses.lm_nll(graphdef, p, batch)[0])(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = rng.choice(len(train_rows["input_ids"]), 16, replace=False)
        params, state = step(params, state, {k: v[idx] for k, v in train_rows.items()})
    held_loss, _ = jax.jit(losses.lm_nll, static_argnums=0)(graphdef, params,
                                                          dict(held_rows))
    counts = np.bincount(train_rows["input_ids"][:, 1:][train_rows["loss_mask"][:, 1:] > 0],
                         minlength=len(tok)) + 1.0
    targets = held_rows["input_ids"][held_rows["loss_mask"] > 0]
    unigram = -np.log(counts / counts.sum())[targets].mean()
    assert float(held_loss) < 0.5 * unigram
