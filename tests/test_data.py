"""Data package: iterator determinism/resume, SFT masks, readers, the sentiment task."""
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from jaxrlhf.data import iterator, paths, records, sft, tokenizer as tokenizer_lib
from jaxrlhf.tasks import get_task


def _arrays(n=10):
    return {"x": np.arange(n), "y": np.arange(n) * 2}


def test_iterator_deterministic_and_resumes_exactly():
    a = iterator.BatchIterator(_arrays(), 3, seed=7)
    b = iterator.BatchIterator(_arrays(), 3, seed=7)
    assert a.num_batches_per_epoch == 3
    first = [next(a) for _ in range(8)]
    assert all(np.array_equal(f["x"], next(b)["x"]) for f in first)
    assert all(np.array_equal(f["y"], 2 * f["x"]) for f in first)
    epoch0 = np.concatenate([f["x"] for f in first[:3]])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    c = iterator.BatchIterator(_arrays(), 3, seed=7)
    for _ in range(4):
        next(c)
    state = c.get_state()
    d = iterator.BatchIterator(_arrays(), 3, seed=7)
    d.set_state(state)
    for f in first[4:]:
        assert np.array_equal(next(d)["x"], f["x"])
    assert not np.array_equal(first[0]["x"], first[3]["x"])  # new permutation per epoch


def test_tokenize_sft_masks_match_reference():
    task = get_task("sentiment")
    tok = task.tokenizer
    examples = [{"prompt": "the movie was", "completion": " good ."},
                {"prompt": "the movie was", "completion": " very bad , and the food was nice ."}]
    out = sft.tokenize_sft(examples, tok, max_len=8)
    v = tok.get_vocab()
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert pad != eos
    ref_ids = [v["the"], v["movie"], v["was"], v["good"], v["."], eos, pad, pad]
    np.testing.assert_array_equal(out["input_ids"][0], ref_ids)
    np.testing.assert_array_equal(out["attention_mask"][0], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["loss_mask"][0], [0, 0, 0, 1, 1, 1, 0, 0])
    # second example is cut at the response end
    np.testing.assert_array_equal(out["loss_mask"][1], [0, 0, 0, 1, 1, 1, 1, 1])
    assert eos not in out["input_ids"][1].tolist()
    assert out.stats.truncated == 1 and out.stats.examples == 2
    assert {k: v.dtype for k, v in out.items()} == {k: np.int32 for k in out}


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        records.load_records(str(path))
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"text": "x"}\n')
    rows = records.load_records(str(path))
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        sft.sft_examples(rows)


def test_chat_messages_layout(tmp_path):
    tok = get_task("sentiment").tokenizer
    path = tmp_path / "chat.jsonl.gz"
    row = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "how was it"},
                        {"role": "assistant", "content": " good ."}]}
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(row) + "\n")
    [ex] = sft.sft_examples(records.load_records(str(path)), tok)
    assert ex["completion"] == " good ."
    assert ex["prompt"] == "user: hi\nassistant: hello\nuser: how was it\nassistant:"


def test_gold_reward_from_tokens_matches_text():
    task = get_task("sentiment")
    tok = task.tokenizer
    rng = np.random.default_rng(0)
    B, T = 32, 12
    ids = rng.integers(0, len(tok), size=(B, T)).astype(np.int32)
    lengths = rng.integers(0, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, tok.pad_token_id)
    texts = [tok.decode(row[: n].tolist(), skip_special_tokens=True)
             for row, n in zip(ids, lengths)]
    want = task.gold_reward([""] * B, texts)
    got = jax.jit(task.gold_reward_from_tokens)(None, None, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    assert np.any(want != 0)
    demos = task.demonstrations(4, seed=1)
    enc = [tok(d["completion"])["input_ids"] for d in demos]
    assert all(tok.unk_token_id not in e for e in enc)


def test_demonstrations_deterministic_and_mean_gold_near_zero():
    task = get_task("sentiment")
    demos = task.demonstrations(2000, seed=0)
    assert demos[:5] == task.demonstrations(5, seed=0)
    gold = task.gold_reward([d["prompt"] for d in demos], [d["completion"] for d in demos])
    assert gold.dtype == np.float32 and abs(gold.mean()) < 0.05
    assert gold.min() >= -1 and gold.max() <= 1
    assert 2.0 < task.unigram_entropy() < 5.0
    assert task.prompts(3, seed=2) == task.prompts(3, seed=2)


def test_train_bpe_tokenizer_round_trip(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world"] * 20
    tok = tokenizer_lib.train_bpe_tokenizer(texts, vocab_size=300)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    text = "the lazy fox said hello ünïcode"
    assert tok.decode(tok(text)["input_ids"]) == text
    tok.save_pretrained(tmp_path / "tok")
    again = tokenizer_lib.load_tokenizer(str(tmp_path / "tok"))
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token_id == tok.pad_token_id and again.eos_token_id == tok.eos_token_id
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub id"):
        tokenizer_lib.load_tokenizer(str(tmp_path / "absent"))   # hub ids: tests/test_hub.py


def test_data_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.data_dir() == tmp_path
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert paths.resolve("x.jsonl") == tmp_path / "x.jsonl"
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=paths.ENV_VAR):
        paths.data_dir()


def test_reads_real_hh_row():
    rows = records.load_records(f"{FIXTURES}/hh_harmless_base_sample.jsonl.gz")
    origin, row = rows[0]
    assert origin.endswith("hh_harmless_base_sample.jsonl.gz:1") and len(rows) == 40
    assert {"chosen", "rejected"} <= set(row)
