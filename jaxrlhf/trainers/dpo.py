"""Direct preference optimisation — DPO, conservative DPO, IPO, SimPO, ORPO, KTO — from the
SFT policy.

``python -m jaxrlhf dpo --config=configs/dpo/quickstart.py --workdir=DIR
    --config.policy_init=SFT_WORKDIR``

The pairs are those the reward model learns from (``jaxrlhf.pairs``, ``config.reward.*``):
with no ``data.source``, two samples of the SFT policy per prompt labelled by the task's
gold reward. KTO (``dpo.loss="kto"``) learns from unpaired examples instead, each a
completion labelled desirable or not (``jaxrlhf.pairs``, ``jaxrlhf.data.unpaired``), with a
mismatched completion from which it estimates its reference point. The reference
log-probs — response tokens only — are computed once, before training, from the frozen SFT
policy and travel with the data. The loss (``dpo.loss``: ``jaxrlhf.losses.PREFERENCE_LOSSES``
or ``UNPAIRED_LOSSES``) is a supervised stage's loss over the shared step of
``jaxrlhf.trainers.supervised`` (``jaxrlhf.trainers.dpo_program``, shared with online
DPO). Every evaluation reports the held-out pairs' metrics
(TRL's names: ``eval/rewards/accuracies``, ...) and, on the task, the gold reward and KL of
samples of the policy drawn as PPO draws them (``config.sampling.*``) on PPO's held-out
prompts (``jaxrlhf.rl.evaluation``), so DPO lands on PPO's reward–KL plot.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from jaxrlhf import losses, pairs as pairs_lib, parallel, workdir as workdir_lib
from jaxrlhf.data.iterator import BatchIterator, fixed_batches
from jaxrlhf.errors import ConfigError
from jaxrlhf.metrics import read_metrics
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.rl import evaluation
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import loop, supervised
from jaxrlhf.trainers.dpo_program import build, data_kind, with_reference
from jaxrlhf.trainers.stage import (DryRunPrograms, Stage, abstract_batch, abstract_trained,
                                    number, policy_config, step_program, with_gold)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) DPO from the SFT policy in ``policy_init``."""
    settings = RunSettings.from_config(config)
    if not settings.policy_init:
        raise ConfigError("config.policy_init is empty: pass the workdir of a finished SFT run "
                          "(--config.policy_init=SFT_WORKDIR)")
    mesh = parallel.make_mesh(settings.mesh)
    policy = workdir_lib.load_model(settings.policy_init, CausalLM)
    data = pairs_lib.prepare_pairs(settings, workdir, policy, "dpo")
    workdir_lib.write_model_card(workdir, policy.model_config, "params",
                                 lora=settings.lora.config, base=settings.policy_init,
                                 base_dtype=settings.lora.base_dtype)
    t, reference_free = settings.train, settings.dpo.loss in losses.REFERENCE_FREE_LOSSES
    # The reference is the policy at step 0: under LoRA, the base as the adapters see it.
    start = (policy.params if settings.lora.config is None
             else lora_lib.cast(policy.params, settings.lora.base_dtype))
    reference = parallel.place(start, mesh, settings.rules)
    kind = data_kind(settings)
    train_data, eval_data = (with_reference(arrays, kind, policy.graphdef, reference,
                                            t.batch_size, mesh, not reference_free)
                               for arrays in (data.train, data.eval))
    del reference    # its log-probs are computed; the weights need not stay on the devices
    program = build(settings, policy, mesh)
    eval_batches = fixed_batches(eval_data, t.batch_size)
    sample_eval = (supervised.policy_evaluation(settings, program, policy, data.task, mesh)
                   if data.task is not None else lambda params: {})

    def evaluate_state(state: supervised.TrainState) -> dict[str, float]:
        return {**supervised.evaluate_means(state.params, program, eval_batches, mesh),
                **sample_eval(state.params)}

    batches = BatchIterator(train_data, t.batch_size, seed=settings.seed)
    state = loop.run(
        workdir=workdir, train=t, config=config, mesh=mesh, init_state=program.init_state,
        state_shardings=program.state_shardings, step_fn=program.step, batches=batches,
        evaluate=evaluate_state,
        count_tokens=lambda b: int(sum(b[f"{row}_mask"].sum() for row in kind.rows)),
        desc="dpo", abstract_state=program.abstract_state)
    evals = [row for row in read_metrics(workdir) if "eval/loss" in row]
    summary = {**(evaluation.before_after(evals) if data.task is not None else {}),
               "eval_accuracy": evals[-1]["eval/rewards/accuracies"],
               "eval_loss": evals[-1]["eval/loss"], "loss": settings.dpo.loss,
               "beta": settings.dpo.beta, "data": data.stats, "data_counts": data.counts,
               "step": int(state.step)}
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
    return summary


def dry_run(settings: RunSettings, mesh: Mesh) -> DryRunPrograms:
    """The DPO step over abstract weights and a batch of pairs (or KTO's examples), with
    its reference log-probs, of the config's shape."""
    program = build(settings, abstract_trained(CausalLM, policy_config(settings)), mesh)
    kind, b, n = data_kind(settings), settings.train.batch_size, settings.reward.pair_length
    rows = {f"{row}_{part}": ((b, n), jnp.int32) for row in kind.rows
            for part in ("ids", "mask")}
    scalars = {k: ((b,), jnp.float32) for k in (*kind.scalars, *kind.reference_fields)}
    return step_program(program, abstract_batch(mesh, **rows, **scalars,
                                                prompt_length=((b,), jnp.int32)))


def headline(summary: dict[str, Any]) -> str:
    """The held-out accuracy of the implicit reward — at ranking pairs, or for KTO at
    putting examples on their label's side of the reference point — and the gold."""
    loss = summary.get("loss", "dpo")
    kind = "label" if loss in losses.UNPAIRED_LOSSES else "pair"
    return with_gold(f"{loss.upper()} held-out {kind} accuracy "
                     f"{number(summary.get('eval_accuracy'))}", summary)


STAGE = Stage(
    name="dpo", help="direct preference optimisation (DPO, cDPO, IPO, SimPO, ORPO, KTO) "
                     "from a policy",
    sections=("reward", "dpo", "sampling"), train=train, produces="policy",
    reads=("policy",), has_steps=True, dry_run=dry_run,
    headline=headline)
