"""IMDb movie reviews (Maas et al., ACL 2011): ``imdb/{train,test}.jsonl.gz`` under the data
dir, rows ``{"id", "rating", "label", "text"}``."""
from __future__ import annotations

import re

import numpy as np

from jaxrlhf.data.records import describe, load_records
from jaxrlhf.errors import DataError

SPLITS = ("train", "test")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str) -> str:
    """The review with ``<br />`` line breaks replaced by spaces."""
    return _BR.sub(" ", text)


def load_imdb(split: str, limit: int | None = None, source: str | None = None
              ) -> tuple[list[str], np.ndarray]:
    """``(texts, labels)`` of an IMDb split in file order; texts cleaned by
    :func:`clean_review`, labels int64 in {0, 1} (1 = positive). ``limit`` keeps the first
    rows (the files are ordered by label, so a prefix is one-sided; use
    :func:`jaxrlhf.baselines.imdb_gold.balanced_subset`). A malformed row names its file and line."""
    if split not in SPLITS:
        raise ValueError(f"IMDb split {split!r} is not one of {SPLITS}")
    records = load_records(source or f"imdb/{split}.jsonl.gz")
    if limit is not None:
        records = records[:limit]
    texts, labels = [], []
    for origin, row in records:
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str):
            raise DataError(f"{origin}: field 'text' must be a string (the review), got "
                            f"{describe(text) if 'text' in row else 'nothing'}")
        if label not in (0, 1) or isinstance(label, bool):
            raise DataError(f"{origin}: field 'label' must be 0 or 1, got {describe(label)}")
        texts.append(clean_review(text))
        labels.append(label)
    return texts, np.asarray(labels, np.int64)
