"""The ``ppo`` section: PPO and its critic-free relatives (GRPO, RLOO, REINFORCE)."""
from __future__ import annotations

import dataclasses

from jaxrlhf import reward_fns
from jaxrlhf.checks import fail, in_range, positive
from jaxrlhf.choices import ADVANTAGE_KINDS, KL_ESTIMATORS
from jaxrlhf.policy_losses import LOSS_AGGREGATIONS, POLICY_LOSSES

REWARD_SOURCES = ("model", "gold", "none")
VALUE_INITS = ("reward", "policy", "shared")
FROZEN_DTYPES = ("", "bfloat16", "float32")
OLD_LOGPROBS = ("forward", "sampler")


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """PPO and its critic-free relatives (GRPO, RLOO, REINFORCE) with the options of
    docs/design.md's PPO details (item numbers in brackets). How the policy samples is
    ``sampling``; its optimizer ``optim``; responses per iteration ``train.batch_size``."""
    reward_source: str = "model"   # "model": the reward model; "gold": the task's gold
                                   # reward; "none": only the reward_fns
    # Python reward functions ("module:function", jaxrlhf.reward_fns) of the decoded
    # completions, their weighted sum (reward_weights; empty: 1.0 each) added to the score.
    reward_fns: tuple[str, ...] = ()
    reward_weights: tuple[float, ...] = ()
    value_init: str = "reward"     # value trunk from the "reward" model, the "policy", or
                                   # "shared" with the policy (one trunk, two heads) [15]
    num_prompts: int = 4096                                                         # [4]
    num_minibatches: int = 4                                                       # [13]
    ppo_epochs: int = 4
    grad_accum: int = 1            # micro-batches of each minibatch
    kl_coef: float = 0.05                                                           # [7]
    kl_estimator: str = "k1"
    kl_in_reward: bool = True
    adaptive_kl: bool = False                                                       # [8]
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    whiten_rewards: bool = False                                                    # [9]
    gamma: float = 1.0                                                             # [10]
    lam: float = 0.95
    # The policy loss (jaxrlhf.policy_losses.POLICY_LOSSES): "ppo" (the clipped surrogate [12]),
    # "gspo" / "gspo_token" (sequence-level ratio), "cispo" (clipped IS weight x log-prob);
    # its ratio is clipped to [1 - clip_low, 1 + clip_high] (clip_high > clip_low: DAPO's
    # clip-higher). loss_agg (LOSS_AGGREGATIONS): how per-token losses are averaged over
    # the whole optimizer batch.
    policy_loss: str = "ppo"
    # DAPO's length terms (Yu et al. 2025, §3.4): overlong_buffer > 0 adds the soft
    # overlong penalty over the last overlong_buffer tokens of the response length, times
    # overlong_penalty, to the score; mask_truncated leaves responses without an EOS out
    # of the loss (overlong filtering).
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    mask_truncated: bool = False
    # DAPO's dynamic sampling (Yu et al. 2025, §3.2, eq. 11; jaxrlhf.rl.dynamic_sampling):
    # draw dynamic_sampling_pool x the batch's prompts, keep the first groups whose scores
    # are not all equal; a group estimator (grpo, rloo) only.
    dynamic_sampling: bool = False
    dynamic_sampling_pool: int = 2
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg: str = "token_mean"
    value_clip: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    ptx_coef: float = 0.0
    tf_adam: bool = False                                                          # [16]
    single_program: bool = True
    # Whiten advantages per minibatch over real tokens [11] where the estimator calls for
    # it (GAE, REINFORCE; GRPO and RLOO normalise their own); False uses them as they are.
    whiten_advantages: bool = True
    # Advantage estimator (jaxrlhf.rl.advantages): "gae" (PPO, with a value model), or the
    # critic-free "grpo", "rloo", "reinforce" (no value model is built). num_generations
    # responses per prompt; scale_rewards: GRPO divides by the group's std (False: Dr. GRPO).
    advantage: str = "gae"
    num_generations: int = 1
    scale_rewards: bool = True
    # "" keeps the reference and reward models in their trained dtype; "bfloat16" halves
    # their memory (they only run forward passes and carry no optimizer state).
    frozen_dtype: str = ""
    # The old log-probs of the ratio: "forward" recomputes them with one policy forward
    # (the ratio starts at exactly 1; policy/logprob_gap_* logs the sampler's distance from
    # them); "sampler" takes the sampler's own, under the same weights and temperature
    # (~1e-6 apart in fp32, ~0.02 in bf16 or with LoRA's merged weights), one policy
    # forward fewer per iteration.
    old_logprobs: str = "forward"

    def __post_init__(self):
        choices = {"reward_source": REWARD_SOURCES, "value_init": VALUE_INITS,
                   "kl_estimator": KL_ESTIMATORS, "advantage": tuple(ADVANTAGE_KINDS),
                   "frozen_dtype": FROZEN_DTYPES, "policy_loss": tuple(POLICY_LOSSES),
                   "loss_agg": LOSS_AGGREGATIONS, "old_logprobs": OLD_LOGPROBS}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                fail(f"ppo.{field}", getattr(self, field), f"must be one of {allowed}")
        positive(self, "ppo", ("num_prompts", "num_minibatches", "ppo_epochs", "grad_accum",
                                "kl_target", "kl_horizon", "num_generations",
                                "dynamic_sampling_pool"))
        positive(self, "ppo", ("kl_coef", "clip_high", "value_clip", "vf_coef", "ent_coef",
                                "ptx_coef", "overlong_buffer", "overlong_penalty"),
                 allow_zero=True)
        in_range(self, "ppo", ("gamma", "lam", "clip_low"), 0.0, 1.0)
        if ADVANTAGE_KINDS[self.advantage].needs_group and self.num_generations < 2:
            fail("ppo.num_generations", self.num_generations,
                 f"must be >= 2 for ppo.advantage={self.advantage!r}, whose baseline is the "
                 "other responses to the same prompt")
        if (self.uses_value_model and self.reward_source != "model"
                and self.value_init == "reward"):
            fail("ppo.value_init", self.value_init,
                 f"needs a reward model, but ppo.reward_source={self.reward_source!r} trains "
                 "without one; set --config.ppo.value_init=policy")
        self._check_reward_fns()
        if self.dynamic_sampling and not ADVANTAGE_KINDS[self.advantage].needs_group:
            fail("ppo.dynamic_sampling", self.dynamic_sampling,
                 f"filters groups of responses to one prompt, but ppo.advantage="
                 f"{self.advantage!r} has none; use a group estimator (grpo, rloo) with "
                 "ppo.num_generations >= 2")
        if not self.kl_in_reward and self.kl_estimator == "k1":
            fail("ppo.kl_estimator", self.kl_estimator,
                 "has no KL gradient as a loss term (its expectation under the sampling "
                 "policy is 0); with ppo.kl_in_reward=False use 'k3' (DeepSeekMath) or 'k2'")

    def _check_reward_fns(self) -> None:
        for field in ("reward_fns", "reward_weights"):
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                fail(f"ppo.{field}", value, "must be a tuple, e.g. ('my_rewards:fn',) and (1.0,)")
            object.__setattr__(self, field, tuple(value))   # hashable, as jit needs
        reward_fns.check_specs(self.reward_fns, self.reward_weights)
        if self.reward_source == "none" and not self.reward_fns:
            fail("ppo.reward_source", self.reward_source,
                 "scores with ppo.reward_fns only, and none is set; name one "
                 "(--config.ppo.reward_fns=\"('my_rewards:fn',)\") or use 'model' / 'gold'")

    @property
    def function_weights(self) -> tuple[float, ...]:
        """The weight of each of ``reward_fns`` (1.0 each unless ``reward_weights``)."""
        return tuple(float(w) for w in self.reward_weights) or (1.0,) * len(self.reward_fns)

    def check_batch(self, batch_size: int) -> None:
        """``train.batch_size`` responses split into prompts of ``num_generations`` answers
        and into ``num_minibatches`` minibatches of ``grad_accum`` micro-batches."""
        if batch_size % self.num_generations:
            fail("train.batch_size", batch_size,
                 f"must be divisible by ppo.num_generations={self.num_generations} (it counts "
                 "responses: batch_size / num_generations prompts per iteration)")
        if batch_size % self.num_minibatches:
            fail("train.batch_size", batch_size,
                 f"must be divisible by ppo.num_minibatches={self.num_minibatches}")
        if (batch_size // self.num_minibatches) % self.grad_accum:
            fail("ppo.grad_accum", self.grad_accum,
                 f"must divide the minibatches of {batch_size // self.num_minibatches} rows "
                 f"(train.batch_size / ppo.num_minibatches)")

    @property
    def updates_per_iteration(self) -> int:
        """Optimizer steps in one PPO iteration: every minibatch of every epoch."""
        return self.ppo_epochs * self.num_minibatches

    @property
    def shared_trunk(self) -> bool:
        """The value head reads the policy's own trunk (``value_init='shared'``)."""
        return self.uses_value_model and self.value_init == "shared"

    @property
    def uses_value_model(self) -> bool:
        """Whether the advantage estimator needs a value model (GAE); critic-free ones
        (GRPO, RLOO, REINFORCE) build and store none."""
        return ADVANTAGE_KINDS[self.advantage].needs_values
