"""The verifiable ``arithmetic`` task: its exact-match reward on hand-written cases (both the
text and the jitted token path), the disjoint held-out split, pass@k against an exact
enumeration over subsets, the accuracy summary keys, and SFT -> GRPO end to end at smoke size."""
import itertools
import json

import jax
import numpy as np
import pytest

from conftest import read_summary, run_cli
from jaxrlhf.data.tokenizer import encode_prompts
from jaxrlhf.rl import evaluation
from jaxrlhf.tasks import get_task
from jaxrlhf.tasks.arithmetic import TEST_PERCENT, ArithmeticTask, split_of

TASK = ArithmeticTask(digits=2)
EOS = TASK.tokenizer.eos_token_id
PAD = TASK.tokenizer.pad_token_id
T = 6   # response tokens

# (prompt, response text, ends with EOS, right?)
CASES = [
    ("37+85=", "122", True, True),
    ("0+0=", "0", True, True),
    ("99+1=", "100", True, True),
    ("5+7=", "12", True, True),
    ("37+85=", "121", True, False),        # wrong number
    ("37+85=", "12", True, False),         # a prefix of the answer
    ("37+85=", "", True, False),           # empty: EOS only
    ("37+85=", "12+2", True, False),       # a non-digit
    ("37+85=", "1+=", True, False),
    ("37+85=", "1220", True, False),       # trailing digit
    ("37+85=", "122=", True, False),       # trailing garbage
    ("37+85=", "0122", True, False),       # leading zero: not the canonical answer
    ("5+7=", "012", True, False),
    ("0+0=", "00", True, False),
    ("37+85=", "122", False, False),       # no EOS
]


def token_rows(responses, eos_flags):
    """Responses as right-padded ids and mask [n, T], the mask through the first EOS."""
    ids = np.full((len(responses), T), PAD, np.int32)
    mask = np.zeros((len(responses), T), np.int32)
    for i, (text, eos) in enumerate(zip(responses, eos_flags)):
        row = TASK.tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS] * eos
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def token_gold(prompts, ids, mask):
    query, query_mask = encode_prompts(TASK.tokenizer, prompts, 8)
    return np.asarray(jax.jit(TASK.gold_reward_from_tokens)(query, query_mask, ids, mask))


def test_the_reward_is_exact_on_hand_written_cases():
    prompts, responses, eos, right = map(list, zip(*CASES))
    want = np.array(right, np.float32)
    np.testing.assert_array_equal(token_gold(prompts, *token_rows(responses, eos)), want)
    # the text path sees no EOS (a decoded response carries none): it agrees where there is one
    text = TASK.gold_reward(prompts, responses)
    np.testing.assert_array_equal(text[np.array(eos)], want[np.array(eos)])
    # ... and strips whitespace, reads up to an EOS text, and scores a malformed prompt 0
    np.testing.assert_array_equal(
        TASK.gold_reward(["37+85=", "37+85=", "37+85", "a+b="],
                         [" 122 ", "122<|endoftext|>9", "122", "122"]), [1.0, 1.0, 0.0, 0.0])


def test_token_reward_matches_the_text_reward_on_random_responses():
    rng = np.random.default_rng(0)
    demos = TASK.demonstrations(256, seed=3)
    prompts = [d["prompt"] for d in demos]
    alphabet = list("0123456789+=")
    responses = []
    for d in demos:   # the answer, a near miss, or random characters
        kind = rng.integers(3)
        answer = d["completion"]
        if kind == 0:
            responses.append(answer)
        elif kind == 1:
            responses.append(answer[:-1] + str((int(answer[-1]) + 1) % 10))
        else:
            responses.append("".join(rng.choice(alphabet, size=rng.integers(0, T))))
    eos = [True] * len(responses)
    want = TASK.gold_reward(prompts, responses)
    np.testing.assert_array_equal(token_gold(prompts, *token_rows(responses, eos)), want)
    assert 0.2 < want.mean() < 0.5


def test_held_out_pairs_are_disjoint_from_training_pairs():
    pairs = {split: {tuple(map(int, p[:-1].split("+"))) for p in TASK.prompts(2000, 0, split)}
             for split in ("train", "test")}
    assert not pairs["train"] & pairs["test"]
    assert all(split_of(a, b) == split for split, ps in pairs.items() for a, b in ps)
    every = [split_of(a, b) for a in range(100) for b in range(100)]
    assert abs(every.count("test") / len(every) - TEST_PERCENT / 100) < 0.01
    demos = TASK.demonstrations(50, 1, "test")
    assert all(int(d["completion"]) == sum(map(int, d["prompt"][:-1].split("+")))
               for d in demos)
    assert get_task("arithmetic").gold_is_accuracy and not get_task("sentiment").gold_is_accuracy


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_pass_at_k_matches_an_enumeration_over_subsets(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            want = sum(any(s) for s in subsets) / len(subsets)
            np.testing.assert_allclose(evaluation.pass_at_k(n, np.array([c]), k), [want])


def test_accuracy_summary_is_the_mean_with_its_stderr_over_prompts():
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)   # [3, 4]
    out = evaluation.summarize({"gold": correct.reshape(-1), "score": np.zeros(12),
                                "kl": np.zeros(12)}, TASK, samples_per_prompt=4)
    per_prompt = correct.mean(axis=1)
    assert out["eval/accuracy"] == pytest.approx(6 / 12) == out["eval/gold"]
    assert out["eval/accuracy_stderr"] == pytest.approx(per_prompt.std(ddof=1) / np.sqrt(3))
    # pass@2 per prompt: 1 - C(2,2)/C(4,2) = 5/6, 0, 1; pass@4: 1, 0, 1
    assert out["eval/pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert out["eval/pass@4"] == pytest.approx(2 / 3)
    assert set(k for k in out if "pass@" in k) == {"eval/pass@2", "eval/pass@2_stderr",
                                                    "eval/pass@4", "eval/pass@4_stderr"}
    one = evaluation.summarize({"gold": correct[:, 0], "score": np.zeros(3), "kl": np.zeros(3)},
                               TASK)   # one sample per prompt: the binomial s.e.
    p = 2 / 3
    assert one["eval/accuracy_stderr"] == pytest.approx(np.sqrt(p * (1 - p) / 2))
    assert not any("pass@" in k for k in one)
    other = evaluation.summarize({"gold": correct.reshape(-1), "score": np.zeros(12),
                                  "kl": np.zeros(12)}, get_task("sentiment"), 4)
    assert set(other) == {"eval/gold", "eval/gold_stderr", "eval/score", "eval/kl"}
    summary = evaluation.before_after([one | {"eval/pass@2": 0.5, "eval/pass@2_stderr": 0.1},
                                       one | {"eval/pass@2": 0.7, "eval/pass@2_stderr": 0.1}])
    assert summary["accuracy_before"] == summary["accuracy_after"] == pytest.approx(p)
    assert (summary["pass@2_before"], summary["pass@2_after"]) == (0.5, 0.7)


@pytest.mark.slow   # notebook 12's smoke run (default suite) runs the same two stages
def test_smoke_pipeline_sft_then_grpo_reports_accuracy(tmp_path):
    run_cli("pipeline", "configs/pipeline/arithmetic_grpo.py:smoke", tmp_path, timeout=600)
    summary = read_summary(tmp_path)
    assert summary["stages"] == ["sft", "grpo"]
    grpo = summary["grpo"]
    for key in ("accuracy_before", "accuracy_after", "accuracy_before_stderr",
                "accuracy_after_stderr", "pass@4_before", "pass@4_after", "gold_before", "kl"):
        assert key in grpo, key
    assert 0.0 <= grpo["accuracy_after"] <= grpo["pass@4_after"] <= 1.0
    assert grpo["advantage"] == "grpo"
    with open(tmp_path / "grpo" / "config.json") as f:
        config = json.load(f)
    assert config["policy_init"] == str(tmp_path / "sft")
    assert config["ppo"]["reward_source"] == "gold"
