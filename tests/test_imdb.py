"""IMDb reviews: the loader, and the IMDb controlled-sentiment task built explicitly from it."""
import gzip
import json

import numpy as np
import pytest

from conftest import FIXTURES, full_dataset
from jaxrlhf.data import imdb


def test_load_imdb_reads_the_file_layout():
    texts, labels = imdb.load_imdb("test", source=f"{FIXTURES}/imdb_synthetic.jsonl")
    assert len(texts) == 24 and labels.dtype == np.int64 and labels.tolist() == [0, 1] * 12
    assert texts[0].startswith("A dull, lifeless mess.  ") and not any("<br" in t for t in texts)
    assert imdb.load_imdb("test", limit=5, source=f"{FIXTURES}/imdb_synthetic.jsonl")[0] == texts[:5]


needs_data = full_dataset("imdb/test.jsonl.gz")


@needs_data
def test_load_imdb_reads_real_rows():
    texts, labels = imdb.load_imdb("test")
    assert len(texts) == len(labels) == 25000
    assert set(np.unique(labels)) == {0, 1}
    assert labels.sum() == 12500
    assert all(isinstance(t, str) and t for t in texts[:100])
    assert not any("<br" in t for t in texts)


def test_clean_review():
    assert imdb.clean_review("One.<br /><br />Two<br/>three") == "One.  Two three"


def test_load_imdb_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"id": 0, "rating": 9, "label": 1, "text": "fine"}) + "\n")
        f.write(json.dumps({"id": 1, "rating": 9, "label": 7, "text": "bad"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz:2: .*label"):
        imdb.load_imdb("train", source=str(path))
    with pytest.raises(ValueError, match="split"):
        imdb.load_imdb("validation")



@needs_data
def test_imdb_task_builds_its_assets_once(tmp_path, monkeypatch, capsys):
    """load_task trains the tokenizer and gold classifier into its directory on first use
    (saying so) and reads them back afterwards; nothing trains on attribute access."""
    from jaxrlhf.baselines import imdb_gold
    from jaxrlhf.tasks import imdb as imdb_task
    small = lambda: imdb_gold.train_gold_classifier(2000, 2000)  # noqa: E731
    monkeypatch.setattr(imdb_task, "train_gold_classifier", small)
    task = imdb_task.load_task(vocab_size=512, tokenizer_reviews=500, directory=str(tmp_path))
    assert "training the gold classifier" in capsys.readouterr().out
    assert 0.75 < task.gold_test_accuracy <= 1.0
    monkeypatch.setattr(imdb_task, "train_gold_classifier", lambda: pytest.fail("retrained"))
    again = imdb_task.load_task(vocab_size=512, tokenizer_reviews=500, directory=str(tmp_path))
    assert "training" not in capsys.readouterr().out
    demos = again.demonstrations(8, seed=0)
    assert demos == task.demonstrations(8, seed=0)
    gold = again.gold_reward([d["prompt"] for d in demos], [d["completion"] for d in demos])
    np.testing.assert_allclose(gold, task.gold_reward([d["prompt"] for d in demos],
                                                      [d["completion"] for d in demos]))
    assert gold.dtype == np.float32


@needs_data
def test_imdb_gold_is_the_classifiers_logit_and_prefixes_count_tokens(tmp_path, monkeypatch):
    """The DPO paper's IMDb task: prompts of 2-8 tokens (held-out ones from test reviews),
    demonstrations of up to 48 more, and a gold reward equal to scikit-learn's decision
    function of the frozen classifier on prompt + response (unbounded log-odds)."""
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    from jaxrlhf.baselines import imdb_gold
    from jaxrlhf.tasks import imdb as imdb_task
    monkeypatch.setattr(imdb_task, "train_gold_classifier",
                        lambda: imdb_gold.train_gold_classifier(2000, 2000))
    task = imdb_task.load_task(vocab_size=512, tokenizer_reviews=500, directory=str(tmp_path))
    demos = task.demonstrations(64, seed=3)
    tok = task.tokenizer
    for d in demos:
        assert 1 <= len(tok(d["prompt"], add_special_tokens=False)["input_ids"]) <= 8 + 1
        assert len(tok(d["completion"], add_special_tokens=False)["input_ids"]) <= 48 + 1
    test_reviews = set(task.reviews["test"])
    held_out = task.prompts(32, seed=3, split="test")
    assert all(any(r.startswith(p) for r in test_reviews) for p in held_out[:8])

    prompts, responses = [d["prompt"] for d in demos], [d["completion"] for d in demos]
    texts = [p + r for p, r in zip(prompts, responses)]
    sk = SkLogisticRegression()
    sk.coef_ = np.asarray(task.gold.model.coef, np.float64)[None, :]
    sk.intercept_ = np.array([task.gold.model.intercept])
    sk.classes_ = np.array([0, 1])
    reference = sk.decision_function(task.gold.vocab.transform(texts))
    assert (reference < task.logit_cap).mean() > 0.9   # the cap binds only degenerate text
    reference = np.minimum(reference, task.logit_cap)
    gold = task.gold_reward(prompts, responses)
    np.testing.assert_allclose(gold, reference, rtol=1e-5, atol=1e-5)
    assert task.gold_is_logit and (gold < 0).any() and (gold > 0).any()
    np.testing.assert_array_equal(task.gold_reward(prompts, responses), gold)  # deterministic
    exploit = task.gold_reward(prompts[:1], [" excellent" * 40])
    np.testing.assert_allclose(exploit, task.logit_cap)   # repeating a word hits the cap
    assert all(isinstance(v, (np.ndarray, float, int)) or v is None
               for v in vars(task.gold.model).values() if not isinstance(v, dict)), \
        "the gold holds only fixed numpy parameters (nothing trainable)"
