"""A run's preference pairs: gold-labelled on the built-in task, or read from files.

Shared by every stage that learns from preferences (the reward model, DPO), so they train
on the same data from the same config fields (``config.reward.*``, ``config.data.*``). With
no ``data.source`` the pairs are built on the task and labelled by its gold reward —
``reward.samples_per_prompt`` samples of the SFT policy per prompt (compared in every pair,
or ``reward.pairs_per_prompt`` of them) when one is given, else demonstrations; otherwise
they are TRL ``{prompt, chosen, rejected}`` or Anthropic HH ``{chosen, rejected}`` rows.

KTO (``dpo.loss="kto"``) learns from unpaired examples made of the same data: on the task
the very responses the pairs would compare, each desirable when its gold reward exceeds
``dpo.kto_threshold`` (by default the median gold of the training responses, applied to
the held-out ones too); from files TRL ``{prompt, completion, label}`` rows, or pairs
converted as TRL's ``unpair_preference_dataset`` does (chosen desirable, rejected not).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from jaxrlhf import sampling, workdir as workdir_lib
from jaxrlhf.data import preference, records as records_lib, unpaired
from jaxrlhf.data.tokenizer import decode_rows, encode_prompts
from jaxrlhf.errors import DataError
from jaxrlhf.sections import DataSettings, RewardSettings
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.tasks.base import Task
from jaxrlhf.workdir import TrainedModel


def policy_samples(r: RewardSettings, policy: TrainedModel, prompts: list[str],
                   seed: int) -> list[list[str]]:
    """``reward.samples_per_prompt`` sampled responses to each prompt from the SFT policy
    (temperature ``reward.sample_temperature``), each one batch of all prompts: [K][prompts]."""
    tok = policy.tokenizer
    ids, mask = encode_prompts(tok, prompts)
    generate = jax.jit(functools.partial(
        sampling.generate, policy.graphdef, max_new_tokens=r.max_response_tokens,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=r.sample_temperature))
    keys = jax.random.split(jax.random.key(seed), r.samples_per_prompt)
    outs = (generate(policy.params, ids, mask, key) for key in keys)
    return [decode_rows(tok, out.tokens, out.mask) for out in outs]


def task_responses(r: RewardSettings, task: Task, n: int, seed: int,
                   policy: TrainedModel | None, split: str = "train"
                   ) -> tuple[list[str], list[list[str]]]:
    """The prompts of ``split`` and responses [K][prompts] that make about ``n`` pairs (the
    recipe of ``reward.samples_per_prompt`` responses and ``reward.pairs_per_prompt`` pairs
    per prompt): samples of the SFT policy when a policy is given, else the task's
    demonstrations; ``ceil(n / pairs per prompt)`` prompts."""
    k = r.samples_per_prompt
    per_prompt = r.pairs_per_prompt or k * (k - 1) // 2
    m = -(-n // per_prompt)                                             # prompts
    if policy is not None:
        prompts = task.prompts(m, seed=seed, split=split)
        return prompts, policy_samples(r, policy, prompts, seed)
    demos = task.demonstrations(k * m, seed=seed, split=split)
    prompts = [d["prompt"] for d in demos[:m]]
    return prompts, [[d["completion"] for d in demos[j * m:(j + 1) * m]] for j in range(k)]


def gold_pairs(r: RewardSettings, task: Task, n: int, seed: int, policy: TrainedModel | None,
               split: str = "train"
               ) -> tuple[list[preference.PreferencePair], preference.LabelStats]:
    """About ``n`` pairs of :func:`task_responses`, labelled by the task's gold reward."""
    prompts, responses = task_responses(r, task, n, seed, policy, split)
    pairs, stats = preference.gold_labelled_pairs(
        prompts, responses, task.gold_reward, np.random.default_rng(seed), mode=r.label_mode,
        temperature=r.label_temperature, pairs_per_prompt=r.pairs_per_prompt)
    return pairs[:n], stats


def file_pairs(r: RewardSettings, d: DataSettings) -> tuple[list, list]:
    """Training and held-out pairs from ``data.source`` (and ``data.eval_source``, or the
    rows after the first ``reward.num_train_pairs``)."""
    train = preference.pairs_from_records(records_lib.load_records(d.source, d.split))
    if d.eval_source:
        evals = preference.pairs_from_records(records_lib.load_records(d.eval_source,
                                                                       d.eval_split))
    else:
        train, evals = train[: r.num_train_pairs], train[r.num_train_pairs:]
    return train[: r.num_train_pairs], evals[: r.num_eval_pairs]


def gold_examples(settings: RunSettings, task: Task, n: int, seed: int,
                  policy: TrainedModel | None, split: str, threshold: float | None
                  ) -> tuple[list[unpaired.UnpairedExample], float]:
    """KTO's examples on the task: every response of :func:`task_responses` for about
    ``n`` pairs — the completions the pair recipe would compare — desirable when its gold
    reward exceeds ``threshold`` (None: the median of their golds)."""
    prompts, responses = task_responses(settings.reward, task, n, seed, policy, split)
    return unpaired.gold_labelled_examples(prompts, responses, task.gold_reward, threshold)


def file_examples(r: RewardSettings, d: DataSettings) -> tuple[list, list]:
    """KTO's training and held-out examples from ``data.source`` (and ``data.eval_source``,
    or the rows after the first ``reward.num_train_pairs``): ``{prompt, completion, label}``
    rows, or pairs converted as TRL does; the row counts are ``reward.num_*_pairs``."""
    rows = records_lib.load_records(d.source, d.split)
    train, evals = rows[: r.num_train_pairs], rows[r.num_train_pairs:]
    if d.eval_source:
        evals = records_lib.load_records(d.eval_source, d.eval_split)
    return (unpaired.examples_from_records(train),
            unpaired.examples_from_records(evals[: r.num_eval_pairs]))


@dataclasses.dataclass
class Pairs:
    """A run's tokenized pairs (``preference.tokenize_pairs`` arrays) or, for KTO,
    unpaired examples (``unpaired.tokenize_unpaired`` arrays) and where they came from;
    ``task`` is None for file data."""
    tokenizer: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    train_rows: list      # the training PreferencePairs (or UnpairedExamples)
    task: Task | None
    stats: dict[str, str]
    counts: dict[str, dict[str, int]]    # the stats as numbers: {"train": ..., "eval": ...}


def prepare_pairs(settings: RunSettings, workdir: str, policy: TrainedModel | None,
                  stage: str) -> Pairs:
    """The run's training and held-out pairs — for a loss of unpaired examples (KTO,
    ``dpo.unpaired``), unpaired examples instead — tokenized with the run's tokenizer (the
    policy's when there is one; ``stage`` names the run in the printed statistics)."""
    r, d, seed = settings.reward, settings.data, settings.seed
    task = None if d.source else get_task(d.task)
    kto, labels = settings.dpo.unpaired and stage == "dpo", {}
    if task is not None and kto:
        train, threshold = gold_examples(settings, task, r.num_train_pairs, seed, policy,
                                         "train", settings.dpo.threshold)
        evals, _ = gold_examples(settings, task, r.num_eval_pairs, seed + 1, policy, "test",
                                 threshold)
        labels = {"train": {"threshold": threshold}, "eval": {"threshold": threshold}}
    elif task is not None:
        train, labels["train"] = gold_pairs(r, task, r.num_train_pairs, seed, policy)
        evals, labels["eval"] = gold_pairs(r, task, r.num_eval_pairs, seed + 1, policy,
                                            "test")
        labels = {split: stats.report() for split, stats in labels.items()}
    else:
        train, evals = file_examples(r, d) if kto else file_pairs(r, d)
    texts = ([t for e in train for t in (e.prompt, e.completion)] if kto
             else [t for p in train for t in (p.prompt, p.chosen, p.rejected)])
    tokenizer = workdir_lib.run_tokenizer(
        workdir, inherited=policy.tokenizer if policy else None,
        directory=settings.data.tokenizer, task=task, texts=texts,
        bpe_vocab_size=settings.data.bpe_vocab_size)
    tokenize = unpaired.tokenize_unpaired if kto else preference.tokenize_pairs
    limits = dict(max_prompt_tokens=r.max_prompt_tokens,
                  max_response_tokens=r.max_response_tokens)
    train_arrays, train_stats = tokenize(train, tokenizer, **limits)
    eval_arrays, eval_stats = tokenize(evals, tokenizer, **limits)
    stats = {"train": train_stats.report(), "eval": eval_stats.report()}
    counts = {split: {**split_stats.counts(), **labels.get(split, {})}
              for split, split_stats in (("train", train_stats), ("eval", eval_stats))}
    print(f"[{stage}] train data: {counts['train']}; eval data: {counts['eval']}")
    usable = len(train_arrays["prompt_length"])
    if usable < settings.train.batch_size:
        raise DataError(f"{d.source or 'task ' + repr(d.task)}: {usable} usable training "
                        f"{'examples' if kto else 'pairs'} ({stats['train']}), fewer than one "
                        f"batch of config.train.batch_size={settings.train.batch_size}")
    return Pairs(tokenizer, train_arrays, eval_arrays, train, task, stats, counts)
