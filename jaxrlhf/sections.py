"""The typed sections of a run's settings — ``optim``, ``train``, ``data``, ``reward``,
``ppo``, ``dpo``, ``bon``, ``lora`` — and the checks they share.

Each section is a frozen dataclass whose ``__post_init__`` checks its own ranges and
relations, naming the offending config field (``config.ppo.clip=-1 must be >= 0``) in a
``ConfigError``. ``jaxrlhf.settings.RunSettings`` reads them from a ``ConfigDict``, after
:func:`check_types` has checked every value's kind.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from jaxrlhf.data.preference import LABEL_MODES
from jaxrlhf.errors import ConfigError
from jaxrlhf.losses import PREFERENCE_LOSSES
from jaxrlhf.models.config import DTYPES
from jaxrlhf.models.lora import LoRAConfig
from jaxrlhf.rl.advantages import ESTIMATORS as ADVANTAGE_ESTIMATORS
from jaxrlhf.rl.kl import ESTIMATORS
from jaxrlhf.tasks import TASKS

REWARD_SOURCES = ("model", "gold")
VALUE_INITS = ("reward", "policy", "shared")
BON_SPLITS = ("eval", "train")
FROZEN_DTYPES = ("", "bfloat16", "float32")
MIN_BPE_VOCAB = 258  # the 256 byte-level symbols, <|pad|> and <|endoftext|>


def fail(field: str, value: Any, why: str) -> typing.NoReturn:
    """Raise a ConfigError: ``config.FIELD=VALUE`` and why it cannot be used."""
    raise ConfigError(f"config.{field}={value!r} {why}")


def _in_range(section: Any, prefix: str, fields: Sequence[str], lo: float, hi: float, *,
              hi_open: bool = False) -> None:
    for name in fields:
        value = getattr(section, name)
        if not lo <= value <= hi or (hi_open and value == hi):
            fail(f"{prefix}.{name}", value, f"must lie in [{lo}, {hi}{')' if hi_open else ']'}")


def check_types(cls, values: Mapping[str, Any], prefix: str) -> None:
    """Each value has its field's declared type: an integer for ``int`` (not a bool), a
    finite number for ``float``, true/false for ``bool``, a string for ``str``."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        want, field = hints.get(name), f"{prefix}{name}"
        if want is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(field, value, "must be a number")
            if not math.isfinite(value):
                fail(field, value, "must be finite")
        elif want is int and (isinstance(value, bool) or not isinstance(value, int)):
            fail(field, value, "must be an integer")
        elif want is bool and not isinstance(value, bool):
            fail(field, value, "must be True or False")
        elif want is str and not isinstance(value, str):
            fail(field, value, "must be a string")


def _positive(section: Any, prefix: str, fields: Sequence[str], *,
              allow_zero: bool = False) -> None:
    for name in fields:
        value = getattr(section, name)
        if value < 0 or (value == 0 and not allow_zero):
            fail(f"{prefix}.{name}", value, "must be >= 0" if allow_zero else "must be positive")


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay, and global-norm clipping (0: off)."""
    learning_rate: float
    warmup_steps: int
    end_lr_ratio: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    grad_clip: float

    def __post_init__(self):
        _positive(self, "optim", ("learning_rate",))
        _positive(self, "optim", ("warmup_steps", "grad_clip", "weight_decay", "eps"),
                  allow_zero=True)
        _in_range(self, "optim", ("end_lr_ratio",), 0.0, 1.0)
        _in_range(self, "optim", ("b1", "b2"), 0.0, 1.0, hi_open=True)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The shell's cadence. ``steps`` counts optimizer steps for SFT and reward modelling and
    PPO *iterations* for PPO (each is ``ppo_epochs x num_minibatches`` optimizer steps);
    ``run_steps`` > 0 stops an invocation after that many and checkpoints (re-run resumes)."""
    steps: int
    batch_size: int
    grad_accum: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    num_samples: int
    sample_tokens: int
    tensorboard: bool
    run_steps: int

    def __post_init__(self):
        _positive(self, "train", ("steps", "batch_size", "grad_accum", "log_every",
                                  "eval_every", "checkpoint_every", "keep_checkpoints"))
        _positive(self, "train", ("run_steps", "num_samples"), allow_zero=True)
        _positive(self, "train", ("sample_tokens",))
        if self.batch_size % self.grad_accum:
            fail("train.batch_size", self.batch_size,
                 f"must be divisible by train.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """SFT data: a built-in ``task`` or a local file / ``datasets`` ``source``."""
    task: str
    source: str
    eval_source: str
    split: str
    eval_split: str
    tokenizer: str
    bpe_vocab_size: int
    max_len: int
    num_train: int
    num_eval: int

    def __post_init__(self):
        if self.task not in TASKS:
            fail("data.task", self.task, f"is not a built-in task; choose from {sorted(TASKS)}")
        _positive(self, "data", ("num_train", "num_eval"))
        if self.max_len < 2:
            fail("data.max_len", self.max_len, "must be at least 2 (a token to read and one "
                 "to predict)")
        if self.bpe_vocab_size < MIN_BPE_VOCAB:
            fail("data.bpe_vocab_size", self.bpe_vocab_size, f"must be at least "
                 f"{MIN_BPE_VOCAB} (the byte alphabet and the pad and EOS tokens)")


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """Bradley–Terry reward modelling: data source, truncation and loss options."""
    source: str
    split: str
    eval_source: str
    eval_split: str
    num_train_pairs: int
    num_eval_pairs: int
    num_reference: int
    max_prompt_tokens: int
    max_response_tokens: int
    label_mode: str
    label_temperature: float
    sample_temperature: float
    use_margin: bool
    center_coef: float

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            fail("reward.label_mode", self.label_mode, f"must be one of {LABEL_MODES}")
        _positive(self, "reward", ("num_train_pairs", "num_eval_pairs", "num_reference",
                                   "max_prompt_tokens", "max_response_tokens",
                                   "label_temperature", "sample_temperature"))
        _positive(self, "reward", ("center_coef",), allow_zero=True)

    @property
    def pair_length(self) -> int:
        """Tokens of one scored row: prompt, response and the EOS."""
        return self.max_prompt_tokens + self.max_response_tokens + 1


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """PPO with the options of docs/design.md's PPO details (item numbers in the docs)."""
    reward_source: str
    reward_init: str   # deprecated spelling of the top-level reward_init (RunSettings)
    value_init: str
    num_prompts: int
    num_eval_prompts: int
    prompt_length: int
    response_length: int
    batch_size: int
    num_minibatches: int
    ppo_epochs: int
    grad_accum: int
    temperature: float
    top_k: int
    top_p: float
    kl_coef: float
    kl_estimator: str
    kl_in_reward: bool
    adaptive_kl: bool
    kl_target: float
    kl_horizon: float
    penalize_missing_eos: bool
    missing_eos_penalty: float
    truncate_token_id: int
    truncate_min_length: int
    whiten_rewards: bool
    gamma: float
    lam: float
    clip: float
    value_clip: float
    vf_coef: float
    ent_coef: float
    ptx_coef: float
    learning_rate: float
    adam_eps: float
    tf_adam: bool
    single_program: bool
    whiten_advantages: bool
    advantage: str
    num_generations: int
    scale_rewards: bool
    # "" keeps the reference and reward models in their trained dtype; "bfloat16" halves
    # their memory (they only run forward passes and carry no optimizer state).
    frozen_dtype: str

    def __post_init__(self):
        choices = {"reward_source": REWARD_SOURCES, "value_init": VALUE_INITS,
                   "kl_estimator": ESTIMATORS, "advantage": tuple(ADVANTAGE_ESTIMATORS),
                   "frozen_dtype": FROZEN_DTYPES}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                fail(f"ppo.{field}", getattr(self, field), f"must be one of {allowed}")
        _positive(self, "ppo", ("num_prompts", "num_eval_prompts", "prompt_length",
                                "response_length", "batch_size", "num_minibatches",
                                "ppo_epochs", "grad_accum", "temperature", "learning_rate",
                                "adam_eps", "kl_target", "kl_horizon", "num_generations"))
        _positive(self, "ppo", ("kl_coef", "clip", "value_clip", "vf_coef", "ent_coef",
                                "ptx_coef", "top_k", "truncate_min_length"), allow_zero=True)
        _in_range(self, "ppo", ("gamma", "lam"), 0.0, 1.0)
        if self.truncate_token_id < -1:
            fail("ppo.truncate_token_id", self.truncate_token_id, "must be a token id or -1 "
                 "(no truncation token)")
        if self.batch_size % self.num_generations:
            fail("ppo.batch_size", self.batch_size,
                 f"must be divisible by ppo.num_generations={self.num_generations} (it counts "
                 "responses: batch_size / num_generations prompts per iteration)")
        if ADVANTAGE_ESTIMATORS[self.advantage].needs_group and self.num_generations < 2:
            fail("ppo.num_generations", self.num_generations,
                 f"must be >= 2 for ppo.advantage={self.advantage!r}, whose baseline is the "
                 "other responses to the same prompt")
        if self.uses_value_model and self.reward_source == "gold" and self.value_init == "reward":
            fail("ppo.value_init", self.value_init,
                 "needs a reward model, but ppo.reward_source='gold' trains without one; "
                 "set --config.ppo.value_init=policy")
        if self.batch_size % self.num_minibatches:
            fail("ppo.batch_size", self.batch_size,
                 f"must be divisible by ppo.num_minibatches={self.num_minibatches}")
        if not 0.0 < self.top_p <= 1.0:
            fail("ppo.top_p", self.top_p, "must lie in (0, 1]")
        if not self.kl_in_reward and self.kl_estimator == "k1":
            fail("ppo.kl_estimator", self.kl_estimator,
                 "has no KL gradient as a loss term (its expectation under the sampling "
                 "policy is 0); with ppo.kl_in_reward=False use 'k3' (DeepSeekMath) or 'k2'")

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

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
        return ADVANTAGE_ESTIMATORS[self.advantage].needs_values

    @property
    def prompts_per_iteration(self) -> int:
        """``batch_size`` responses are ``num_generations`` samples of this many prompts."""
        return self.batch_size // self.num_generations


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    """A loss of the DPO family (``jaxrlhf.losses.PREFERENCE_LOSSES``) and its options."""
    loss: str
    beta: float
    label_smoothing: float      # cDPO only: the assumed label-flip rate
    simpo_gamma: float          # SimPO only: the target margin

    def __post_init__(self):
        if self.loss not in PREFERENCE_LOSSES:
            fail("dpo.loss", self.loss, f"must be one of {tuple(PREFERENCE_LOSSES)}")
        _positive(self, "dpo", ("beta",))
        _positive(self, "dpo", ("simpo_gamma",), allow_zero=True)
        if not (0.0 < self.label_smoothing < 0.5 if self.loss == "cdpo"
                else self.label_smoothing == 0.0):
            fail("dpo.label_smoothing", self.label_smoothing,
                 "must lie in (0, 0.5) for dpo.loss='cdpo' and be 0 for the other losses")


@dataclasses.dataclass(frozen=True)
class BestOfNSettings:
    """``n`` samples for each of ``num_prompts`` task prompts (``split``: the held-out
    ``eval`` prompts or PPO's ``train`` prompts), ``batch_size`` samples at a time."""
    n: int
    num_prompts: int
    split: str
    batch_size: int

    def __post_init__(self):
        _positive(self, "bon", ("n", "num_prompts", "batch_size"))
        if self.split not in BON_SPLITS:
            fail("bon.split", self.split, f"must be one of {BON_SPLITS}")


@dataclasses.dataclass(frozen=True)
class LoRASettings:
    """Adapters (``jaxrlhf.models.lora``) of ``rank`` (0: off, every parameter trains) on
    the linear layers whose names fully match the regular expression ``targets``, over a
    frozen base kept in ``base_dtype``."""
    rank: int
    alpha: float
    targets: str
    base_dtype: str

    def __post_init__(self):
        _positive(self, "lora", ("rank",), allow_zero=True)
        _positive(self, "lora", ("alpha",))
        if self.base_dtype not in DTYPES:
            fail("lora.base_dtype", self.base_dtype, f"must be one of {DTYPES}")
        try:
            re.compile(self.targets)
        except re.error as e:
            fail("lora.targets", self.targets, f"is not a regular expression: {e}")

    @property
    def config(self) -> LoRAConfig | None:
        """The model-side adapter spec, or None when LoRA is off."""
        return LoRAConfig(self.rank, self.alpha, self.targets) if self.rank else None
