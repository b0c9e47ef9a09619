"""Non-neural text models: bag-of-words features, logistic regression, and what is built
from them (the IMDb gold sentiment classifier, pairwise Bradley-Terry baselines).

- :mod:`~jaxrlhf.baselines.bow`: text -> sparse bag-of-words features.
- :mod:`~jaxrlhf.baselines.logistic`: binary logistic regression (scikit-learn).
- :mod:`~jaxrlhf.baselines.text_classifier`: a vocabulary plus a model, text in, logit out.
- :mod:`~jaxrlhf.baselines.pairwise`: Bradley-Terry logistic regression on preference pairs.
- :mod:`~jaxrlhf.baselines.imdb_gold`: the IMDb gold sentiment classifier (Ziegler et al.
  2019, Sec. 3.1), trained only when :func:`~jaxrlhf.baselines.imdb_gold.train_gold_classifier`
  is called.

Nothing here trains on import or on attribute access.
"""
