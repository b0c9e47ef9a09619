"""Non-neural baselines for the HH harmless reward model (configs/reward/hh_harmless.py).

Same data and split as the reward trainer: the rows of
``hh-rlhf/harmless-base-test.jsonl.gz`` in file order, parsed by
``preference.pairs_from_records``; the first 2,000 pairs train, the rest (312) evaluate.

  (a) length: prefer the longer response (characters; also words). Ties count 0.5.
  (b) pairwise bag-of-words logistic regression, ``P(a > b) = sigmoid(w . (f(a) - f(b)))``,
      features of the response only (the prompt is shared), trained on the 2,000 pairs;
      l2 chosen by 5-fold cross-validation on the training pairs only.

    python experiments/hh_baselines/run.py [--out experiments/hh_baselines/results.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from jaxrlhf.baselines import bow, pairwise
from jaxrlhf.data import preference, records

SOURCE = "hh-rlhf/harmless-base-test.jsonl.gz"
NUM_TRAIN, NUM_EVAL = 2000, 312
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
FEATURES = {"unigram": dict(ngram=(1, 1), max_features=20000, min_count=2),
            "unigram+bigram": dict(ngram=(1, 2), max_features=20000, min_count=2)}


def load_pairs() -> list[preference.PreferencePair]:
    """The pairs exactly as the reward trainer parses them, in file order."""
    return preference.pairs_from_records(records.load_records(SOURCE))


def longer_accuracy(chosen: list[str], rejected: list[str], length) -> float:
    """Accuracy of "the longer response is chosen"; equal lengths count 0.5."""
    lc = np.array([length(t) for t in chosen])
    lr = np.array([length(t) for t in rejected])
    return float(np.mean(np.where(lc > lr, 1.0, np.where(lc == lr, 0.5, 0.0))))


def fit_and_score(settings: dict, l2: float, train_c, train_r, eval_c, eval_r) -> float:
    vocab = bow.BowVocabulary.fit(train_c + train_r, **settings)
    model = pairwise.fit_pairwise(vocab, train_c, train_r, l2=l2)
    return pairwise.pairwise_accuracy(vocab, model, eval_c, eval_r)


def cross_validate(settings: dict, chosen, rejected, folds: int = 5, seed: int = 0
                   ) -> dict[float, float]:
    order = np.random.default_rng(seed).permutation(len(chosen))
    parts = np.array_split(order, folds)
    out = {}
    for l2 in L2_GRID:
        accs = []
        for k in range(folds):
            held = set(parts[k].tolist())
            tr = [i for i in order if i not in held]
            accs.append(fit_and_score(settings, l2, [chosen[i] for i in tr],
                                      [rejected[i] for i in tr],
                                      [chosen[i] for i in parts[k]],
                                      [rejected[i] for i in parts[k]]))
        out[l2] = float(np.mean(accs))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    t0 = time.perf_counter()
    pairs = load_pairs()
    train, evals = pairs[:NUM_TRAIN], pairs[NUM_TRAIN:][:NUM_EVAL]
    if len(evals) != NUM_EVAL:
        raise ValueError(f"{SOURCE}: expected {NUM_TRAIN + NUM_EVAL} pairs, got {len(pairs)}")
    train_c, train_r = [p.chosen for p in train], [p.rejected for p in train]
    eval_c, eval_r = [p.chosen for p in evals], [p.rejected for p in evals]

    words = lambda t: len(t.split())  # noqa: E731
    results: dict = {
        "source": SOURCE, "num_train_pairs": len(train), "num_eval_pairs": len(evals),
        "longer_response": {
            "eval_accuracy_chars": longer_accuracy(eval_c, eval_r, len),
            "eval_accuracy_words": longer_accuracy(eval_c, eval_r, words),
            "train_accuracy_chars": longer_accuracy(train_c, train_r, len),
            "eval_ties_chars": int(sum(len(c) == len(r) for c, r in zip(eval_c, eval_r))),
        },
        "bow_pairwise_logreg": {},
    }
    for name, settings in FEATURES.items():
        cv = cross_validate(settings, train_c, train_r)
        l2 = max(cv, key=cv.get)
        vocab = bow.BowVocabulary.fit(train_c + train_r, **settings)
        model = pairwise.fit_pairwise(vocab, train_c, train_r, l2=l2)
        results["bow_pairwise_logreg"][name] = {
            "features": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
            | {"vocabulary_size": len(vocab), "weighting": vocab.weighting,
               "normalize": vocab.normalize, "text": "response only"},
            "cv_accuracy_by_l2": {str(k): v for k, v in cv.items()},
            "l2": l2,
            "train_accuracy": pairwise.pairwise_accuracy(vocab, model, train_c, train_r),
            "eval_accuracy": pairwise.pairwise_accuracy(vocab, model, eval_c, eval_r),
        }
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=2)
    print(text)
    pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
