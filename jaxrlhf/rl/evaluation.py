"""How every policy is evaluated, whatever trained it: sample once per held-out prompt and
report the task's gold reward, the proxy (reward-model) score and the KL from the SFT
policy, so PPO, GRPO, RLOO, DPO and best-of-n land on the same reward–KL plot.

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


def gold_metrics(gold: np.ndarray, gold_is_logit: bool, prefix: str) -> dict[str, float]:
    """Mean gold of per-sample values ± its s.e. (``{prefix}gold``, ``{prefix}gold_stderr``)
    and, for a logit gold, the same of its probability (``{prefix}gold_prob...``)."""
    mean, stderr = mean_and_stderr(gold)
    out = {f"{prefix}gold": mean, f"{prefix}gold_stderr": stderr}
    if gold_is_logit:
        prob, prob_stderr = mean_and_stderr(gold_probability(gold))
        out.update({f"{prefix}gold_prob": prob, f"{prefix}gold_prob_stderr": prob_stderr})
    return out


def summarize(out: Mapping[str, np.ndarray], gold_is_logit: bool = False,
              prefix: str = "eval/") -> dict[str, float]:
    """Mean gold (± s.e.; and P(positive) for a logit gold), proxy score and KL of
    per-sample evaluation results."""
    return {**gold_metrics(out["gold"], gold_is_logit, prefix),
            f"{prefix}score": float(np.mean(out["score"])),
            f"{prefix}kl": float(np.mean(out["kl"]))}


def before_after(evals: list[Mapping[str, float]]) -> dict[str, float]:
    """The summary keys every policy-training stage reports, from its first evaluation
    (the SFT policy) and its last: ``gold_before``, ``gold_after`` (± ``*_stderr``; for a
    logit gold also ``gold_prob_before`` / ``gold_prob_after``), ``score_before``,
    ``score_after`` and ``kl``."""
    first, last = evals[0], evals[-1]
    out = {}
    for name in ("gold", "gold_prob"):
        if f"eval/{name}" in first:
            out.update({f"{name}_before": first[f"eval/{name}"],
                        f"{name}_before_stderr": first[f"eval/{name}_stderr"],
                        f"{name}_after": last[f"eval/{name}"],
                        f"{name}_after_stderr": last[f"eval/{name}_stderr"]})
    return {**out, "score_before": first["eval/score"], "score_after": last["eval/score"],
            "kl": last["eval/kl"]}


def held_out_prompts(task, tokenizer, prompt_length: int, n: int,
                     seed: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """The task's held-out prompts every stage evaluates on (``task.prompts(n, seed + 1,
    "test")``)
    and their left-padded ``prompt_ids`` / ``prompt_mask`` [n, prompt_length]."""
    prompts = task.prompts(n, seed=seed + 1, split="test")
    ids, mask = encode_prompts(tokenizer, prompts, prompt_length)
    return prompts, {"prompt_ids": ids, "prompt_mask": mask}
