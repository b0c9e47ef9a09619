"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO", §3.2, eq. 11) in one compiled program.

A group — the ``G`` responses to one prompt — whose scores are all equal has zero
group-relative advantage for every response (GRPO, RLOO): it carries no gradient signal,
only a smaller effective batch. DAPO keeps sampling until the batch holds only groups with
``0 < |{o_i correct}| < G``, i.e. scores not all equal. Here, with static shapes, the
rollout samples and scores a pool of ``ppo.dynamic_sampling_pool`` x the batch's prompts at
once and keeps the first ``keep`` informative groups in draw order (a stable sort by
"uninformative", so jittable); if the pool holds fewer, the batch is filled with the first
uninformative ones, which get zero loss weight. verl's ``filter_groups`` (with
``max_num_gen_batches``) is the sequential version of the same rule.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Selection(NamedTuple):
    groups: jax.Array        # [keep] pool indices of the kept groups, informative first
    rows: jax.Array          # [keep * G] their response rows, each group's G consecutive
    weight: jax.Array        # [keep * G] 1 for a row of an informative group, else 0
    metrics: dict[str, jax.Array]


def informative_groups(scores: jax.Array, group_size: int) -> jax.Array:
    """Whether each group's scores are not all equal (exactly). [pool * G] -> [pool] bool."""
    groups = scores.reshape(-1, group_size)                              # [pool, G]
    return groups.max(-1) > groups.min(-1)


def select_groups(scores: jax.Array, group_size: int, keep: int) -> Selection:
    """The first ``keep`` groups of the pool whose scores are not all equal, in draw order,
    then (if too few) the first all-equal ones, weighted 0. Metrics: ``dynamic/prompts_drawn``
    (groups examined, in draw order, to find ``keep`` informative ones: the pool when it
    holds fewer), ``dynamic/informative_groups`` (in the whole pool) and
    ``dynamic/kept_uninformative`` (kept with zero weight; 0 when the pool sufficed).
    scores: [pool * G] sequence scores, each group's G consecutive."""
    informative = informative_groups(scores, group_size)                # [pool]
    pool = informative.shape[0]
    groups = jnp.argsort(~informative, stable=True)[:keep]              # [keep]
    rows = (groups[:, None] * group_size + jnp.arange(group_size)).reshape(-1)
    weight = jnp.repeat(informative[groups], group_size).astype(jnp.float32)
    found = jnp.cumsum(informative)                                     # [pool]
    count = found[-1]
    drawn = jnp.where(count >= keep, jnp.argmax(found >= keep) + 1, pool)
    metrics = {"dynamic/prompts_drawn": drawn, "dynamic/informative_groups": count,
               "dynamic/kept_uninformative": jnp.maximum(keep - count, 0)}
    return Selection(groups, rows, weight, metrics)
