"""IMDb reviews and the bag-of-words gold sentiment classifier."""
import gzip
import json

import numpy as np
import pytest

from jaxrlhf.data import imdb, paths


def _have_imdb():
    try:
        return (paths.data_dir() / "imdb" / "test.jsonl.gz").exists()
    except FileNotFoundError:
        return False


needs_data = pytest.mark.skipif(not _have_imdb(), reason="IMDb data not found")


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

