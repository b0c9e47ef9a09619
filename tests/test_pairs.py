"""The preference-pair recipe (``jaxrlhf.data.preference.gold_labelled_pairs``): K samples
per prompt, every pair of them or a fixed number, labels by the larger gold score or by a
Bradley–Terry draw on the gold's own scale, exact ties counted (and dropped under max)."""
import itertools
import math

import numpy as np
import pytest

from jaxrlhf.data import preference


def numeric_gold(prompts, responses):
    """A gold reward that reads the response as its score."""
    return np.array([float(r) for r in responses])


def _responses(k, prompts, rng, tie_every=0):
    values = rng.normal(size=(k, prompts)).round(3)
    if tie_every:                       # make sample 1 tie sample 0 on every n-th prompt
        values[1, ::tie_every] = values[0, ::tie_every]
    return [[str(v) for v in row] for row in values], values


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_max_labels_every_pair_with_the_higher_gold_and_drops_exact_ties(k):
    rng = np.random.default_rng(k)
    responses, values = _responses(k, 40, rng, tie_every=4)
    pairs, stats = preference.gold_labelled_pairs([f"p{i}" for i in range(40)], responses,
                                                  numeric_gold, rng, mode="max")
    ties = sum(values[a, i] == values[b, i] for i in range(40)
               for a, b in itertools.combinations(range(k), 2))
    assert stats.candidates == 40 * k * (k - 1) // 2
    assert stats.ties == stats.ties_dropped == ties == 10
    assert len(pairs) == stats.candidates - ties
    assert all(float(p.chosen) > float(p.rejected) for p in pairs)
    assert [p.margin for p in pairs] == pytest.approx([float(p.chosen) - float(p.rejected)
                                                       for p in pairs])
    per_prompt = {i: sum(p.prompt == f"p{i}" for p in pairs) for i in range(40)}
    assert per_prompt[1] == k * (k - 1) // 2          # no tie on prompt 1


def test_a_fixed_number_of_pairs_per_prompt_is_that_many_distinct_pairs():
    rng = np.random.default_rng(0)
    responses, _ = _responses(4, 30, rng)
    pairs, stats = preference.gold_labelled_pairs([f"p{i}" for i in range(30)], responses,
                                                  numeric_gold, rng, mode="max",
                                                  pairs_per_prompt=2)
    assert stats.candidates == 60 and len(pairs) == 60
    for i in range(30):
        mine = {tuple(sorted((p.chosen, p.rejected))) for p in pairs if p.prompt == f"p{i}"}
        assert len(mine) == 2
    chosen_pairs = {p.origin.rsplit(":", 1)[1] for p in pairs}
    assert len(chosen_pairs) > 1                       # not always the same two


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_bradley_terry_labels_agree_with_the_sigmoid_in_frequency(temperature):
    """Over 4,000 pairs of gold gap 0.8, the first response wins with frequency within
    4 binomial standard errors of sigmoid(0.8 / t); ties are labelled, not dropped."""
    n, gap = 4000, 0.8
    rng = np.random.default_rng(7)
    responses = [[str(gap)] * n, ["0.0"] * n]
    pairs, stats = preference.gold_labelled_pairs(["p"] * n, responses, numeric_gold, rng,
                                                  mode="bradley_terry", temperature=temperature)
    p = 1 / (1 + math.exp(-gap / temperature))
    wins = np.mean([pr.chosen == str(gap) for pr in pairs])
    assert len(pairs) == n and stats.ties == 0
    assert abs(wins - p) < 4 * math.sqrt(p * (1 - p) / n), (wins, p)
    tied, tie_stats = preference.gold_labelled_pairs(["p"] * 100, [["1.0"] * 100] * 2,
                                                     numeric_gold, rng, temperature=temperature)
    assert len(tied) == 100 and tie_stats.ties == 100 and tie_stats.ties_dropped == 0


def test_two_samples_label_as_one_draw_per_prompt():
    """K = 2 (the default) draws one uniform per prompt, in order: the labels of the runs
    made before the recipe existed."""
    rng = np.random.default_rng(3)
    responses, values = _responses(2, 50, rng)
    pairs, _ = preference.gold_labelled_pairs([f"p{i}" for i in range(50)], responses,
                                              numeric_gold, np.random.default_rng(11),
                                              temperature=0.3)
    u = np.random.default_rng(11).random(50)
    a_wins = u < 1 / (1 + np.exp(-(values[0] - values[1]) / 0.3))
    assert [p.chosen for p in pairs] == [responses[0][i] if a_wins[i] else responses[1][i]
                                         for i in range(50)]


def test_the_recipe_fields_are_checked():
    from jaxrlhf.errors import ConfigError
    from jaxrlhf.sections import RewardSettings
    with pytest.raises(ConfigError, match="samples_per_prompt=1 must be at least 2"):
        RewardSettings(samples_per_prompt=1)
    with pytest.raises(ConfigError, match="pairs_per_prompt=7 exceeds the 6 pairs"):
        RewardSettings(samples_per_prompt=4, pairs_per_prompt=7)
