"""The named choices of the PPO family that settings validate and algorithms implement.

A leaf module, so that ``jaxrlhf.sections`` can check a config's names without importing
the algorithms of ``jaxrlhf.rl`` (which sit above it; docs/design.md, "Dependency
direction"). ``rl/kl.py`` and ``rl/advantages.py`` implement exactly these names.
"""
from __future__ import annotations

from typing import NamedTuple

# Per-token estimators of KL(pi || pi_ref) (Schulman 2020, "Approximating KL divergence").
KL_ESTIMATORS = ("k1", "k2", "k3")


class AdvantageKind(NamedTuple):
    """What an advantage estimator needs: a value model (a critic), groups of responses
    per prompt (``ppo.num_generations`` >= 2), and per-minibatch whitening (PPO detail 11)."""
    needs_values: bool
    needs_group: bool
    whiten: bool


ADVANTAGE_KINDS: dict[str, AdvantageKind] = {
    # GAE on a learned value (Schulman et al. 2016); PPO's default.
    "gae": AdvantageKind(needs_values=True, needs_group=False, whiten=True),
    # Group-normalised sequence rewards; already normalised, so not whitened again.
    "grpo": AdvantageKind(needs_values=False, needs_group=True, whiten=False),
    # Leave-one-out baseline; unwhitened as in Ahmadian et al. (2024) and TRL's default.
    "rloo": AdvantageKind(needs_values=False, needs_group=True, whiten=False),
    # No baseline but the minibatch mean that whitening subtracts.
    "reinforce": AdvantageKind(needs_values=False, needs_group=False, whiten=True),
}
