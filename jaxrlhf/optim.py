"""Optimizers and learning-rate schedules built from ``config.optim``."""
from __future__ import annotations

import ml_collections
import optax


def warmup_cosine(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``end_lr_ratio`` of it."""
    peak = optim.learning_rate
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * optim.end_lr_ratio)


def adamw(optim: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping (0 disables it) followed by AdamW."""
    clip = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    return optax.chain(*clip, optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
