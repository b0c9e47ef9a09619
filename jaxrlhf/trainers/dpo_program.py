"""The DPO-family program shared by the preference-optimisation stages (``dpo``: offline
pairs or KTO's unpaired examples; ``online_dpo``: pairs sampled from the current policy
each round): sequence log-probs of a batch, the configured loss (``dpo.loss``,
``jaxrlhf.losses.PREFERENCE_LOSSES`` or ``UNPAIRED_LOSSES``) over the shared supervised
step, and the frozen reference's log-probs of the data, which travel with it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf import losses, parallel, scoring
from jaxrlhf.models.build import born_sharded, given_params_init, lora_init
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import supervised
from jaxrlhf.workdir import TrainedModel


def pair_log_probs(graphdef: nnx.GraphDef, params: nnx.State,
                   batch: supervised.Batch) -> tuple[jax.Array, ...]:
    """log pi(chosen | x), log pi(rejected | x) and both response lengths, each [pairs],
    from one forward pass over the chosen and rejected rows."""
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    prompt_length = jnp.concatenate([batch["prompt_length"], batch["prompt_length"]], axis=0)
    logps, tokens = scoring.sequence_log_probs(graphdef, params, ids, mask, prompt_length)
    n = batch["chosen_ids"].shape[0]
    return logps[:n], logps[n:], tokens[:n], tokens[n:]


def unpaired_log_probs(graphdef: nnx.GraphDef, params: nnx.State,
                       batch: supervised.Batch) -> tuple[jax.Array, jax.Array]:
    """log pi(y | x) of each example's completion and log pi(y' | x) of its mismatched
    one (``jaxrlhf.data.unpaired.tokenize_unpaired``), each [examples]. No gradient flows
    through the second: KTO holds its reference point constant (TRL computes these
    log-probs under ``no_grad``), so that pass needs no backward."""
    logps, _ = scoring.sequence_log_probs(graphdef, params, batch["completion_ids"],
                                          batch["completion_mask"], batch["prompt_length"])
    kl_logps, _ = scoring.sequence_log_probs(graphdef, jax.lax.stop_gradient(params),
                                             batch["kl_ids"], batch["kl_mask"],
                                             batch["prompt_length"])
    return logps, kl_logps


def dpo_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: supervised.Batch, *,
             objective: Callable) -> tuple[jax.Array, dict, jax.Array]:
    """The configured DPO-family loss of a pair batch (with its reference log-probs), its
    metrics, and the number of pairs it averages over."""
    chosen, rejected, n_chosen, n_rejected = pair_log_probs(graphdef, params, batch)
    x = losses.PreferenceLogProbs(chosen, rejected, batch["ref_chosen_logps"],
                                  batch["ref_rejected_logps"], n_chosen, n_rejected)
    loss, metrics = objective(x)
    return loss, metrics, jnp.float32(batch["chosen_ids"].shape[0])


def kto_loss(graphdef: nnx.GraphDef, params: nnx.State, batch: supervised.Batch, *,
             objective: Callable) -> tuple[jax.Array, dict, jax.Array]:
    """The configured loss of unpaired examples (KTO) of a batch (with its reference
    log-probs), its metrics, and the number of examples it averages over."""
    logps, kl_logps = unpaired_log_probs(graphdef, params, batch)
    x = losses.UnpairedLogProbs(logps, batch["ref_completion_logps"], kl_logps,
                                batch["ref_kl_logps"], batch["desirable"])
    loss, metrics = objective(x)
    return loss, metrics, jnp.float32(logps.shape[0])


@dataclasses.dataclass(frozen=True)
class DataKind:
    """What the stage does with one kind of data: the loss of a batch and its registry,
    the log-probs the reference contributes (``log_probs``' first outputs, stored as
    ``reference_fields``), the token rows of an example (``{row}_ids``, ``{row}_mask``,
    all after the example's ``prompt_length`` prompt tokens) and its float fields."""
    loss: Callable
    losses: dict[str, Callable]
    log_probs: Callable
    reference_fields: tuple[str, ...]
    rows: tuple[str, ...]
    scalars: tuple[str, ...]


PAIRS = DataKind(dpo_loss, losses.PREFERENCE_LOSSES, pair_log_probs,
                 ("ref_chosen_logps", "ref_rejected_logps"), ("chosen", "rejected"),
                 ("margin",))
UNPAIRED = DataKind(kto_loss, losses.UNPAIRED_LOSSES, unpaired_log_probs,
                    ("ref_completion_logps", "ref_kl_logps"), ("completion", "kl"),
                    ("desirable",))


def data_kind(settings: RunSettings) -> DataKind:
    """Unpaired examples for KTO (``dpo.unpaired``), pairs for every other loss."""
    return UNPAIRED if settings.dpo.unpaired else PAIRS


def map_pairs(fn: Callable, arrays: dict[str, np.ndarray], batch_size: int,
              mesh: Mesh) -> list[np.ndarray]:
    """``fn(batch) -> tuple of [rows] arrays`` over every row of ``arrays`` in batches of
    ``batch_size`` (the last padded by repeating its first row), concatenated."""
    n = len(next(iter(arrays.values())))
    outs = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        rows = np.where(rows < n, rows, start)
        batch = parallel.shard_batch({k: v[rows] for k, v in arrays.items()}, mesh)
        outs.append([np.asarray(x)[: n - start] for x in parallel.fetch(fn(batch))])
    return [np.concatenate(parts) for parts in zip(*outs)]


@functools.cache
def _scorer(log_probs: Callable, graphdef: nnx.GraphDef) -> Callable:
    """``log_probs`` of ``graphdef`` jitted once (online DPO scores every round)."""
    return jax.jit(functools.partial(log_probs, graphdef))


def with_reference(arrays: dict[str, np.ndarray], kind: DataKind, graphdef: nnx.GraphDef,
                   params: nnx.State, batch_size: int, mesh: Mesh,
                   needed: bool) -> dict[str, np.ndarray]:
    """The pairs (or examples) with the frozen reference's log-probs of their responses
    (zeros when the loss is reference-free); ``params`` placed on ``mesh``."""
    n, fields = len(arrays["prompt_length"]), kind.reference_fields
    if not needed:
        return {**arrays, **{k: np.zeros(n, np.float32) for k in fields}}
    score = _scorer(kind.log_probs, graphdef)
    logps = map_pairs(lambda batch: score(params, batch)[:len(fields)], arrays, batch_size,
                      mesh)
    return {**arrays, **dict(zip(fields, logps))}


def build(settings: RunSettings, policy: TrainedModel, mesh: Mesh) -> supervised.Program:
    """The DPO program: the SFT policy (or adapters on it) trained on the configured loss."""
    init, frozen, lora = given_params_init(policy.params), None, settings.lora.config
    if lora is not None:
        adapters, frozen = lora_init(CausalLM, policy.model_config, policy.params, lora=lora,
                                     seed=settings.seed, base_dtype=settings.lora.base_dtype)
        init = born_sharded(adapters)
    kind = data_kind(settings)
    return supervised.build(
        loss=functools.partial(kind.loss, objective=functools.partial(
            kind.losses[settings.dpo.loss], s=settings.dpo)),
        model_cls=CausalLM, model_config=policy.model_config, init_params=init,
        optim_settings=settings.optim, train=settings.train, mesh=mesh, rules=settings.rules,
        frozen=frozen, lora=lora)
