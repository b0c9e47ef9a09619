"""How every policy is evaluated, whatever trained it: sample once per held-out prompt (or
``sampling.eval_samples_per_prompt`` times) and report the task's gold reward, the proxy
(reward-model) score and the KL from the SFT policy, so PPO, GRPO, RLOO, DPO and best-of-n
land on the same reward–KL plot. For a task whose gold is exact-match correctness
(``gold_is_accuracy``: ``arithmetic``) also the accuracy (pass@1) and pass@k.

The KL of a sample is the sum over its tokens of ``log pi(y_t) - log pi_sft(y_t)`` under
``logits / temperature`` (the distribution that sampled; PPO detail 3): a Monte-Carlo
estimate of KL(pi || pi_sft) whose mean over prompts is the ``kl`` of every summary.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf import sampling, scoring
from jaxrlhf.data.tokenizer import encode_prompts
from jaxrlhf.sections import SamplingSettings
from jaxrlhf.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """The static half of an evaluation: the (plain) policy graph, how it samples, and the
    gold reward and reward model that score what it samples (either may be None)."""
    policy: nnx.GraphDef
    gold: Callable | None          # (query, query_mask, response, mask) -> [batch]
    reward: nnx.GraphDef | None
    gain: float
    bias: float
    eos_id: int
    pad_id: int
    response_length: int
    temperature: float
    top_k: int
    top_p: float

    @classmethod
    def of(cls, policy: nnx.GraphDef, gold: Callable | None, reward: nnx.GraphDef | None,
           gain: float, bias: float, eos_id: int, pad_id: int,
           sampling: SamplingSettings) -> Evaluator:
        """The evaluator that samples as the run's ``sampling`` section says."""
        return cls(policy, gold, reward, gain, bias, eos_id, pad_id, sampling.response_length,
                   sampling.temperature, sampling.top_k, sampling.top_p)

    def sample(self, params: nnx.State, ids: jax.Array, mask: jax.Array,
               key: jax.Array) -> sampling.Completion:
        """One response per left-padded prompt [batch, prompt_len]."""
        return sampling.generate(
            self.policy, params, ids, mask, key, max_new_tokens=self.response_length,
            eos_id=self.eos_id, pad_id=self.pad_id, temperature=self.temperature,
            top_k=self.top_k, top_p=self.top_p)

    def score(self, ids: jax.Array, mask: jax.Array, response: jax.Array,
              response_mask: jax.Array, reward_params: nnx.State | None
              ) -> tuple[jax.Array, jax.Array]:
        """Gold reward and proxy score of responses to prompts, each [batch]; the proxy is
        the gold reward when there is no reward model, and the gold 0 when no task."""
        gold = (self.gold(ids, mask, response, response_mask) if self.gold is not None
                else jnp.zeros(ids.shape[0]))
        if self.reward is None:
            return gold, gold
        seq, seq_mask = scoring.join(ids, mask, response, response_mask)
        return gold, scoring.reward_scores(self.reward, reward_params, seq, seq_mask,
                                           self.gain, self.bias)

    def kl(self, params: nnx.State, ref_params: nnx.State, ids: jax.Array, mask: jax.Array,
           response: jax.Array, response_mask: jax.Array) -> jax.Array:
        """The sequence KL estimate of each response to the reference policy (the same
        plain graph with ``ref_params``). [batch]"""
        seq, seq_mask = scoring.join(ids, mask, response, response_mask)
        prompt_len = ids.shape[1]
        logprobs, _ = scoring.response_log_probs(self.policy, params, seq, seq_mask,
                                                 prompt_len, self.temperature)
        ref_logprobs, _ = scoring.response_log_probs(self.policy, ref_params, seq, seq_mask,
                                                     prompt_len, self.temperature)
        return scoring.sequence_kl(logprobs, ref_logprobs, response_mask)


def evaluate_policy(ev: Evaluator, params: nnx.State, ref_params: nnx.State,
                    reward_params: nnx.State | None, batch: Mapping[str, jax.Array],
                    key: jax.Array) -> dict[str, jax.Array]:
    """Sample once per prompt of ``batch`` (``prompt_ids``, ``prompt_mask``); per-sample
    tokens, mask, gold, proxy score and KL to the reference."""
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    completion = ev.sample(params, ids, mask, key)
    gold, score = ev.score(ids, mask, completion.tokens, completion.mask, reward_params)
    kl = ev.kl(params, ref_params, ids, mask, completion.tokens, completion.mask)
    return {"tokens": completion.tokens, "mask": completion.mask, "gold": gold,
            "score": score, "kl": kl}


def mean_and_stderr(x: np.ndarray) -> tuple[float, float]:
    """The mean of ``x`` and its standard error ``std(ddof=1) / sqrt(n)`` (0 for n = 1)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def gold_probability(gold: np.ndarray) -> np.ndarray:
    """P(positive) = sigmoid(gold) of a gold reward that is a classifier's logit."""
    return 1.0 / (1.0 + np.exp(-np.asarray(gold, np.float64)))


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """The unbiased pass@k estimate from ``n`` samples of a prompt of which ``c`` are right
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1):
    ``1 - C(n - c, k) / C(n, k)``, the probability that k of the n samples drawn without
    replacement hold a right one. ``c`` [prompts] -> [prompts], ``1 <= k <= n``."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n} samples per prompt")
    return np.array([1.0 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c])


def pass_ks(n: int) -> list[int]:
    """The k > 1 of the reported pass@k from ``n`` samples per prompt: 2, 4, 8, ... below
    n, and n (none for n = 1; pass@1 is the accuracy)."""
    return [k for k in (2 ** i for i in range(1, n.bit_length())) if k < n] + [n] * (n > 1)


def accuracy_metrics(correct: np.ndarray, prefix: str) -> dict[str, float]:
    """Exact-match accuracy (pass@1: the mean over every sample) and pass@k (k in
    :func:`pass_ks`) of right / wrong samples ``correct`` [prompts, n], each the mean over prompts ± its s.e. over prompts
    (for n = 1 the binomial s.e. ``sqrt(p (1 - p) / (prompts - 1))``)."""
    n = correct.shape[1]
    right = np.rint(correct).sum(axis=1)                                 # [prompts]
    mean, stderr = mean_and_stderr(correct.mean(axis=1))
    out = {f"{prefix}accuracy": mean, f"{prefix}accuracy_stderr": stderr}
    for k in pass_ks(n):
        mean, stderr = mean_and_stderr(pass_at_k(n, right, k))
        out.update({f"{prefix}pass@{k}": mean, f"{prefix}pass@{k}_stderr": stderr})
    return out


def gold_metrics(gold: np.ndarray, task: Task, samples_per_prompt: int,
                 prefix: str) -> dict[str, float]:
    """Mean gold of per-sample values ``gold`` [prompts * samples_per_prompt] (each
    prompt's samples consecutive) ± its s.e. over prompts (``{prefix}gold``,
    ``{prefix}gold_stderr``); for a logit gold the same of its probability
    (``{prefix}gold_prob...``); for an exact-match gold accuracy and pass@k
    (:func:`accuracy_metrics`)."""
    groups = np.asarray(gold, np.float64).reshape(-1, samples_per_prompt)
    mean, stderr = mean_and_stderr(groups.mean(axis=1))
    out = {f"{prefix}gold": mean, f"{prefix}gold_stderr": stderr}
    if task.gold_is_logit:
        prob, prob_stderr = mean_and_stderr(gold_probability(groups).mean(axis=1))
        out.update({f"{prefix}gold_prob": prob, f"{prefix}gold_prob_stderr": prob_stderr})
    if task.gold_is_accuracy:
        out.update(accuracy_metrics(groups, prefix))
    return out


def summarize(out: Mapping[str, np.ndarray], task: Task, samples_per_prompt: int = 1,
              prefix: str = "eval/") -> dict[str, float]:
    """Mean gold (± s.e.; P(positive) for a logit gold; accuracy and pass@k for an
    exact-match gold), proxy score and KL of per-sample evaluation results,
    ``samples_per_prompt`` consecutive samples per held-out prompt."""
    return {**gold_metrics(out["gold"], task, samples_per_prompt, prefix),
            f"{prefix}score": float(np.mean(out["score"])),
            f"{prefix}kl": float(np.mean(out["kl"]))}


def before_after(evals: list[Mapping[str, float]]) -> dict[str, float]:
    """The summary keys every policy-training stage reports, from its first evaluation
    (the SFT policy) and its last: ``gold_before``, ``gold_after`` (± ``*_stderr``; for a
    logit gold also ``gold_prob_before`` / ``gold_prob_after``; for an exact-match gold
    ``accuracy_before`` / ``accuracy_after`` and ``pass@k_before`` / ``pass@k_after``),
    ``score_before``, ``score_after`` and ``kl``."""
    first, last = evals[0], evals[-1]
    names = ["gold", "gold_prob", "accuracy"] + [
        key.removeprefix("eval/") for key in first
        if key.startswith("eval/pass@") and not key.endswith("_stderr")]
    out = {}
    for name in names:
        if f"eval/{name}" in first:
            out.update({f"{name}_before": first[f"eval/{name}"],
                        f"{name}_before_stderr": first[f"eval/{name}_stderr"],
                        f"{name}_after": last[f"eval/{name}"],
                        f"{name}_after_stderr": last[f"eval/{name}_stderr"]})
    return {**out, "score_before": first["eval/score"], "score_after": last["eval/score"],
            "kl": last["eval/kl"]}


def held_out_prompts(task: Task, tokenizer, prompt_length: int, n: int, seed: int,
                     samples_per_prompt: int = 1) -> tuple[list[str], dict[str, np.ndarray]]:
    """The task's held-out prompts every stage evaluates on (``task.prompts(n, seed + 1,
    "test")``), each repeated ``samples_per_prompt`` times in a row, and their left-padded
    ``prompt_ids`` / ``prompt_mask`` [n * samples_per_prompt, prompt_length]."""
    prompts = [prompt for prompt in task.prompts(n, seed=seed + 1, split="test")
               for _ in range(samples_per_prompt)]
    ids, mask = encode_prompts(tokenizer, prompts, prompt_length)
    return prompts, {"prompt_ids": ids, "prompt_mask": mask}
