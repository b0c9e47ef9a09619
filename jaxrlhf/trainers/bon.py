"""Best-of-n sampling and the data of rejection-sampling fine-tuning.

``python -m jaxrlhf bon --checkpoint=POLICY_DIR --reward=RM_DIR --n=16 --workdir=DIR``
(or ``--config=configs/bon/quickstart.py`` with ``policy_init``, ``reward_init`` and
``bon.*``)

Samples ``bon.n`` responses to each of ``bon.num_prompts`` prompts of the task from the
policy (as PPO samples: ``sampling.temperature``, ``sampling.response_length``, ...),
scores every one with the reward model (or, with ``ppo.reward_source=gold``, the gold
reward) and with
the task's gold reward, and keeps the best by the reward model. It writes

* ``best_of_n.jsonl``: the chosen responses as SFT rows ``{prompt, completion}`` (plus
  their ``score`` and ``gold``) — train ``sft`` on it from the same policy for
  rejection-sampling fine-tuning (expert iteration; ``configs/pipeline/expert_iteration.py``);
* ``pool.npz``: every sample's ``score`` and ``gold`` [prompts, n];
* ``metrics.jsonl``: one row per n' = 1, 2, 4, ..., n with the unbiased estimate of the
  proxy and gold of best-of-n' from the pool and ``KL_bon = log n' - (n' - 1)/n'``
  (``jaxrlhf.rl.best_of_n``);
* ``summary.json``: gold and proxy of plain samples (``*_before``) and of the chosen ones
  (``*_after``) with standard errors over prompts, and ``kl`` = KL_bon(n).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxrlhf import parallel, runfiles, workdir as workdir_lib
from jaxrlhf.data.tokenizer import decode_rows, encode_prompts
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import METRICS_FILE, MetricWriter
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.rl import best_of_n, evaluation
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.tasks.base import traceable_gold
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, abstract_trained,
                                    gold_line, policy_config, trained_config)

CHOSEN_FILE = "best_of_n.jsonl"
POOL_FILE = "pool.npz"


def prompts_of(settings: RunSettings, task) -> list[str]:
    """``bon.num_prompts`` prompts of the task: the held-out ones every stage evaluates on
    (``bon.split='eval'``) or those PPO trains on (``'train'``)."""
    b = settings.bon
    if b.split == "eval":
        return task.prompts(b.num_prompts, seed=settings.seed + 1, split="test")
    return [d["prompt"] for d in task.demonstrations(b.num_prompts, seed=settings.seed)]


def sampler(ev: evaluation.Evaluator) -> Callable:
    """``(params, reward_params, ids, mask, key) -> {tokens, mask, score, gold}``: one
    sample per prompt row, scored, as one compiled program."""
    @jax.jit
    def sample_and_score(params, reward_params, ids, mask, key):
        out = ev.sample(params, ids, mask, key)
        gold, score = ev.score(ids, mask, out.tokens, out.mask, reward_params)
        return {"tokens": out.tokens, "mask": out.mask, "score": score, "gold": gold}
    return sample_and_score


def sample_pool(ev: evaluation.Evaluator, params, reward_params, ids: np.ndarray,
                mask: np.ndarray, n: int, batch_size: int, seed: int,
                mesh) -> dict[str, np.ndarray]:
    """``n`` samples per prompt [prompts, prompt_len], ``batch_size`` rows at a time (the
    last batch padded): tokens and mask [prompts, n, resp], score and gold [prompts, n]."""
    rows = np.repeat(np.arange(len(ids)), n)                        # prompt of each sample
    sample_and_score = sampler(ev)
    parts = []
    for i, start in enumerate(range(0, len(rows), batch_size)):
        take = rows[np.minimum(np.arange(start, start + batch_size), len(rows) - 1)]
        batch = parallel.shard_batch({"ids": ids[take], "mask": mask[take]}, mesh)
        key = jax.random.fold_in(jax.random.key(seed), i)
        out = parallel.fetch(sample_and_score(params, reward_params, batch["ids"],
                                              batch["mask"], key))
        parts.append({k: np.asarray(v)[: len(rows) - start] for k, v in out.items()})
    pool = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {k: v.reshape(len(ids), n, *v.shape[1:]) for k, v in pool.items()}


def curve(score: np.ndarray, gold: np.ndarray) -> list[dict[str, float]]:
    """Proxy and gold of best-of-n' for n' = 1, 2, 4, ... and the pool size, estimated
    without bias from the pool (means over prompts), with KL_bon(n')."""
    pool = score.shape[-1]
    sizes = sorted({2 ** k for k in range(int(np.log2(pool)) + 1)} | {pool})
    return [{"bon/n": m, "bon/kl": best_of_n.kl_best_of_n(m),
             "bon/proxy": float(best_of_n.expected_best_of_n(score, score, m).mean()),
             "bon/gold": float(best_of_n.expected_best_of_n(score, gold, m).mean())}
            for m in sizes]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Sample, score and select best-of-n; write the chosen responses, the pool, the
    best-of-n' curve and the summary to ``workdir``."""
    settings = RunSettings.from_config(config)
    p, b, g = settings.ppo, settings.bon, settings.sampling
    if not settings.policy_init:
        raise ConfigError("no policy: pass --checkpoint=POLICY_DIR (config.policy_init)")
    if p.reward_source == "model" and not settings.reward_init:
        raise ConfigError("no reward model: pass --reward=RM_DIR (config.reward_init), or "
                          "select by the gold reward with --config.ppo.reward_source=gold")
    mesh = parallel.make_mesh(settings.mesh)
    policy = workdir_lib.load_model(settings.policy_init, CausalLM)
    reward = (workdir_lib.load_reward_model(settings.reward_init) if p.reward_source == "model"
              else None)
    task, tok = get_task(settings.data.task), policy.tokenizer
    ev = evaluation.Evaluator.of(
        policy.graphdef, traceable_gold(task, tok),
        reward.model.graphdef if reward else None, reward.gain if reward else 1.0,
        reward.bias if reward else 0.0, tok.eos_token_id, tok.pad_token_id, g)
    prompts = prompts_of(settings, task)
    ids, mask = encode_prompts(tok, prompts, g.prompt_length)
    place = lambda params: parallel.place(params, mesh, settings.rules)  # noqa: E731
    pool = sample_pool(ev, place(policy.params), place(reward.model.params) if reward else None,
                       ids, mask, b.n, b.batch_size, settings.seed, mesh)

    best = best_of_n.select_best(pool["score"])                          # [prompts]
    pick = lambda x: np.take_along_axis(x, best.reshape(-1, *([1] * (x.ndim - 1))), 1)[:, 0]
    responses = decode_rows(tok, pick(pool["tokens"]), pick(pool["mask"]))
    workdir_lib.write_config(workdir, config)
    runfiles.write_text(os.path.join(workdir, CHOSEN_FILE), "".join(
        json.dumps({"prompt": prompt, "completion": response, "score": float(score),
                    "gold": float(gold)}) + "\n"
        for prompt, response, score, gold in zip(prompts, responses, pick(pool["score"]),
                                                 pick(pool["gold"]))))

    def save_pool(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, score=pool["score"], gold=pool["gold"])

    runfiles.write_file(os.path.join(workdir, POOL_FILE), save_pool)
    rows = curve(pool["score"], pool["gold"])
    runfiles.remove(os.path.join(workdir, METRICS_FILE))      # a re-run replaces it
    writer = MetricWriter(workdir, tensorboard=False)
    for row in rows:
        writer.write(row["bon/n"], row)
    writer.close()

    summary = {**_gold_summary(pool["gold"], pick(pool["gold"]), task.gold_is_logit),
               "score_before": float(pool["score"].mean()),
               "score_after": float(pick(pool["score"]).mean()),
               "kl": best_of_n.kl_best_of_n(b.n), "n": b.n, "num_prompts": len(prompts),
               "split": b.split}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def _gold_summary(pool_gold: np.ndarray, chosen_gold: np.ndarray, gold_is_logit: bool
                  ) -> dict[str, float]:
    """``gold_before`` (a random sample of the pool: per prompt, the mean over its n) and
    ``gold_after`` (the chosen), each ± s.e. over prompts; for a logit gold the same of
    P(positive) (``gold_prob_*``)."""
    values = {"gold": (pool_gold.mean(-1), chosen_gold)}
    if gold_is_logit:
        prob = evaluation.gold_probability
        values["gold_prob"] = (prob(pool_gold).mean(-1), prob(chosen_gold))
    out = {}
    for name, (before, after) in values.items():
        for when, x in (("before", before), ("after", after)):
            out[f"{name}_{when}"], out[f"{name}_{when}_stderr"] = evaluation.mean_and_stderr(x)
    return out


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """Sampling and scoring one batch of ``bon.batch_size`` rows, over abstract weights."""
    policy_cfg = policy_config(settings)
    policy = abstract_trained(CausalLM, policy_cfg)
    reward = (abstract_trained(ScalarModel, trained_config(settings.reward_init)
                               if settings.reward_init else policy_cfg, head_init="normal")
              if settings.ppo.reward_source == "model" else None)
    task = get_task(settings.data.task)
    ev = evaluation.Evaluator.of(
        policy.graphdef, traceable_gold(task, task.tokenizer),
        reward.graphdef if reward else None, 1.0, 0.0, policy.tokenizer.eos_token_id,
        policy.tokenizer.pad_token_id, settings.sampling)
    n, length = settings.bon.batch_size, settings.sampling.prompt_length
    batch = abstract_batch(mesh, ids=((n, length), jax.numpy.int32),
                           mask=((n, length), jax.numpy.int32))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    args = (policy.params, reward.params if reward else None, batch["ids"], batch["mask"], key)
    return {"sample_and_score": (sampler(ev), args, policy.params)}


STAGE = Stage(
    name="bon", help="best-of-n samples of a policy by a reward model (rejection sampling)",
    sections=("bon", "sampling", "ppo"), train=run, produces="chosen",
    reads=("policy", "reward_model"), has_steps=False, dry_run=dry_run,
    check=lambda settings, num_devices: settings.data_parallel_size(num_devices),
    headline=lambda s: f"best-of-{s.get('n')} {gold_line(s)}")
