"""A bag-of-words vocabulary and a logistic regression: text in, logit or probability out.

The linear bag-of-words classifier of Maas et al. (ACL 2011, Table 2) and Wang & Manning
(ACL 2012); here the gold reward of the IMDb sentiment task (:mod:`.imdb_gold`). Saved as
the two parts' own files in one directory.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from jaxrlhf.baselines.bow import BowVocabulary
from jaxrlhf.baselines.logistic import LogisticRegression


@dataclasses.dataclass
class TextClassifier:
    """``logit(text) = f(text) . coef + intercept`` with ``f`` the vocabulary's features."""
    vocab: BowVocabulary
    model: LogisticRegression

    def logit(self, texts: Sequence[str]) -> np.ndarray:
        """The logit of each text, float64 [len(texts)]."""
        return self.model.decision_function(self.vocab.transform(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``P(y=1 | text)`` of each text, float64 [len(texts)]."""
        return self.model.predict_proba(self.vocab.transform(texts))

    def save(self, directory: str | os.PathLike) -> None:
        """Write the vocabulary and the model into ``directory`` (created if missing)."""
        self.vocab.save(directory)
        self.model.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        """The classifier :meth:`save` wrote to ``directory``."""
        return cls(BowVocabulary.load(directory), LogisticRegression.load(directory))
