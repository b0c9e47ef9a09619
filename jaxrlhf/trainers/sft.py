"""Supervised fine-tuning: maximum likelihood on demonstration responses.

``python -m jaxrlhf sft --config=configs/sft/quickstart.py --workdir=DIR``

The loss is ``jaxrlhf.losses.lm_nll`` (response tokens and their EOS only); the step, its
accumulation and compilation are ``jaxrlhf.trainers.supervised``. The model starts from
random weights, a local HF directory (``model_init``) or a finished run's policy
(``policy_init``, e.g. rejection-sampling fine-tuning on best-of-n samples), whose
tokenizer it then keeps; with ``lora.rank`` > 0 only adapters on that base train.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxrlhf import parallel, workdir as workdir_lib
from jaxrlhf.data import records as records_lib, sft as sft_data
from jaxrlhf.data.iterator import BatchIterator, fixed_batches
from jaxrlhf.errors import DataError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models.build import resolve_config
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.rl import evaluation
from jaxrlhf.settings import RunSettings
from jaxrlhf.tasks import get_task
from jaxrlhf.trainers import loop, supervised
from jaxrlhf.trainers.stage import DryRunPrograms, Stage, number, policy_config, with_gold


@dataclasses.dataclass
class SFTData:
    """Tokenized SFT data: arrays of ``input_ids``, ``attention_mask``, ``loss_mask``."""
    tokenizer: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    eval_prompts: list[str]
    unigram_entropy: float | None  # of the task's responses, when the task can say
    counts: dict[str, dict[str, int]]  # what tokenization did: {"train": ..., "eval": ...}


def prepare_data(settings: RunSettings, workdir: str, inherited=None) -> SFTData:
    """Examples from the built-in task or a file / ``datasets`` source, tokenized with the
    run's tokenizer (chat rows need it for their template, so it comes first): the
    ``inherited`` one of the policy it starts from, if any."""
    d = settings.data
    tokenizer_kw = dict(directory=d.tokenizer, bpe_vocab_size=d.bpe_vocab_size,
                        inherited=inherited)
    task = None if d.source else get_task(d.task)
    if task is not None:
        tokenizer = workdir_lib.run_tokenizer(workdir, task=task, **tokenizer_kw)
        train = task.demonstrations(d.num_train, seed=settings.seed)
        evals = task.demonstrations(d.num_eval, seed=settings.seed + 1, split="test")
    else:
        records = records_lib.load_records(d.source, d.split)
        if d.eval_source:
            eval_records = records_lib.load_records(d.eval_source, d.eval_split)
        else:
            _check_holdout(len(records), settings)
            records, eval_records = records[:-d.num_eval], records[-d.num_eval:]
        tokenizer = workdir_lib.run_tokenizer(workdir, texts=sft_data.record_texts(records),
                                              **tokenizer_kw)
        train = sft_data.sft_examples(records[: d.num_train], tokenizer)
        evals = sft_data.sft_examples(eval_records[: d.num_eval], tokenizer)
    train_arrays = sft_data.tokenize_sft(train, tokenizer, d.max_len)
    eval_arrays = sft_data.tokenize_sft(evals, tokenizer, d.max_len)
    counts = {"train": train_arrays.stats.report(), "eval": eval_arrays.stats.report()}
    print(f"[sft] train data: {counts['train']}; eval data: {counts['eval']}")
    source = d.source or f"task {d.task!r}"
    if len(train) < settings.train.batch_size:
        raise DataError(f"{source}: {len(train)} training examples, fewer than one batch of "
                        f"config.train.batch_size={settings.train.batch_size}; add rows or "
                        "lower the batch size")
    if train_arrays.stats.empty_completion == len(train):
        raise DataError(f"{source}: all {len(train)} training rows have an empty completion, "
                        "so SFT has no response token to learn (each row would teach only its "
                        "EOS); fill their 'completion' field")
    return SFTData(
        tokenizer=tokenizer, train=train_arrays, eval=eval_arrays,
        eval_prompts=[e["prompt"] for e in evals],
        unigram_entropy=task.unigram_entropy() if task is not None else None, counts=counts)


def _check_holdout(rows: int, settings: RunSettings) -> None:
    """A file without ``data.eval_source`` must hold the held-out rows and a batch more."""
    d, batch = settings.data, settings.train.batch_size
    if rows < d.num_eval + batch:
        raise DataError(f"{d.source}: {rows} rows, too few to hold out config.data.num_eval="
                        f"{d.num_eval} for evaluation and train on a batch of "
                        f"config.train.batch_size={batch}; add rows, lower data.num_eval or "
                        "set data.eval_source")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) SFT; the policy checkpoints and tokenizer land in ``workdir``."""
    settings = RunSettings.from_config(config)
    mesh = parallel.make_mesh(settings.mesh)
    policy = (workdir_lib.load_model(settings.policy_init, CausalLM) if settings.policy_init
              else None)
    data = prepare_data(settings, workdir, policy.tokenizer if policy is not None else None)
    model_config = (policy.model_config if policy is not None else resolve_config(
        settings.model, model_init=settings.model_init, vocab_size=len(data.tokenizer)))
    workdir_lib.write_model_card(workdir, model_config, "params", lora=settings.lora.config,
                                 base=settings.policy_init or settings.model_init,
                                 base_dtype=settings.lora.base_dtype)
    program = supervised.lm_program(settings, model_config, mesh, policy)
    eval_batches = fixed_batches(
        data.eval, settings.train.batch_size,
        f"the SFT evaluation set ({settings.data.eval_source or settings.data.source or 'task'})")
    t = settings.train
    sample = supervised.greedy_sampler(program.graphdef, data.tokenizer, data.eval_prompts,
                                       t.num_samples, t.sample_tokens)

    # From a policy, report the task's gold reward and KL from it, as every stage that
    # trains a policy does (rejection-sampling fine-tuning lands on PPO's reward-KL plot).
    sample_eval = (supervised.policy_evaluation(settings, program, policy,
                                                get_task(settings.data.task), mesh)
                   if policy is not None else lambda params: {})

    def evaluate_state(state: supervised.TrainState) -> loop.Evaluation:
        rows = sample(program.full_params(state.params), int(state.step))
        return {**supervised.evaluate_lm(state.params, program, eval_batches, mesh),
                **sample_eval(state.params)}, rows

    batches = BatchIterator(data.train, t.batch_size, seed=settings.seed)
    state = loop.run(
        workdir=workdir, train=t, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state, count_tokens=lambda b: int(b["attention_mask"].sum()),
        desc="sft", abstract_state=program.abstract_state)
    evals = [row for row in read_metrics(workdir) if "eval/loss" in row]
    summary = {"eval_loss": evals[-1]["eval/loss"], "first_eval_loss": evals[0]["eval/loss"],
               "unigram_entropy": data.unigram_entropy, "step": int(state.step),
               "data_counts": data.counts}
    if policy is not None:
        summary.update(evaluation.before_after(evals))
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The SFT step over abstract weights and a batch of the config's shape."""
    return supervised.lm_dry_run(settings, mesh, policy_config(settings))


STAGE = Stage(
    name="sft", help="supervised fine-tuning on demonstrations (loss on response tokens)",
    sections=("sampling",), train=train, produces="policy", reads=("policy", "chosen"),
    has_steps=True, dry_run=dry_run,
    headline=lambda s: with_gold(f"SFT held-out loss {number(s.get('first_eval_loss'))} -> "
                                 f"{number(s.get('eval_loss'))}", s))
