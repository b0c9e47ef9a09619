"""Python reward functions for tests/test_reward_fns.py, named as "tests.reward_functions:NAME"
(``ppo.reward_fns``): each has a closed form the tests recompute from the decoded texts."""
import math


def word_count(prompts, completions, **columns):
    """The number of words of each completion."""
    return [float(len(c.split())) for c in completions]


def says_good(prompts, completions, **columns):
    """1.0 for a completion containing the word "good", else 0.0."""
    return [float("good" in c.split()) for c in completions]


def constant(prompts, completions, **columns):
    """The same score for every completion: every group has zero variance."""
    return [0.5] * len(completions)


def prompt_length_column(prompts, completions, length, **columns):
    """The dataset column ``length`` (characters of the prompt), as passed in."""
    return [float(n) for n in length]


def fails_on_bad(prompts, completions, **columns):
    """Raises on a completion containing "bad"."""
    for c in completions:
        if "bad" in c.split():
            raise ValueError("no bad words")
    return [0.0] * len(completions)


def one_short(prompts, completions, **columns):
    """One score too few."""
    return [0.0] * (len(completions) - 1)


def nan_on_second(prompts, completions, **columns):
    """NaN for the second completion."""
    return [math.nan if i == 1 else 0.0 for i in range(len(completions))]


not_a_function = 3
