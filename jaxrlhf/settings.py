"""Typed, frozen settings made from a run's ``ConfigDict`` at the boundary, validated once.

The command line and experiment files speak ``ml_collections.ConfigDict`` (locked, so a
misspelt field is an error); everything below the stage shells receives these dataclasses
instead. They are immutable and hashable, so jitted code can close over them (or take them
as static arguments) without reading a mutable dict. Every check names the offending config
field (``config.ppo.clip=-1 must be >= 0``) and raises ``ConfigError``. Every field's
value must have its declared type (an ``int`` field an integer, a ``float`` field a finite
number, ...) before any range is checked. The sections themselves are in
``jaxrlhf.sections``.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxrlhf import parallel
from jaxrlhf.errors import ConfigError
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.sections import (BestOfNSettings, DataSettings, DPOSettings, LoRASettings,
                              OptimSettings, PPOSettings, RewardSettings, TrainSettings,
                              check_types, fail)


def _section_dict(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, ml_collections.ConfigDict):
        raise ConfigError(f"config.{name} must be a section of fields, got {section!r}")
    return dict(section.to_dict())


def _section(cls, config: ml_collections.ConfigDict, name: str):
    """``cls`` from the config section ``name``: every field present, known and typed."""
    values = _section_dict(config, name)
    fields = {f.name for f in dataclasses.fields(cls)}
    for field in sorted(set(values) - fields):
        raise ConfigError(_unknown(f"{name}.{field}", [f"{name}.{f}" for f in sorted(fields)]))
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in values
                     and f.default is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"config.{name} lacks the fields {missing}; start the config from "
                          "jaxrlhf.config.base_config()")
    check_types(cls, values, f"{name}.")
    return cls(**values)


def _reward_init(config: ml_collections.ConfigDict) -> str:
    """The reward model's workdir: ``config.reward_init``, or its deprecated spelling
    ``config.ppo.reward_init`` (with a warning naming the new field)."""
    new, old = config.get("reward_init", ""), config.ppo.get("reward_init", "")
    if old and new and old != new:
        raise ConfigError(f"config.reward_init={new!r} and config.ppo.reward_init={old!r} "
                          "disagree; set only config.reward_init (ppo.reward_init is its "
                          "deprecated spelling)")
    if old and not new:
        warnings.warn("config.ppo.reward_init is deprecated: set config.reward_init (beside "
                      "config.policy_init) instead", FutureWarning, stacklevel=3)
    return new or old


class _TopLevel:
    """The declared types of the top-level fields, for ``sections.check_types``."""
    seed: int
    model_init: str
    policy_init: str
    reward_init: str


# The sections of a single-stage config (beside the fields of ``_TopLevel``).
SECTIONS = ("model", "mesh", "axis_rules", "optim", "train", "data", "reward", "ppo", "dpo",
            "bon", "lora")


def _check_top_level(config: ml_collections.ConfigDict) -> None:
    """A config file may add fields to an unlocked ``base_config()``: a misspelt top-level
    name would be ignored, so every top-level field must be one a stage reads."""
    known = [*typing.get_type_hints(_TopLevel), *SECTIONS]
    for name in config:
        if name not in known:
            raise ConfigError(_unknown(name, known))


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; the fields there are {known}"
    return f"unknown config field {name!r} (set in the config file){hint}"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything one stage reads, typed. Build with :meth:`from_config`."""
    seed: int
    model: ModelConfig          # vocab_size 0: the tokenizer's size (models.build.resolve_config)
    model_init: str             # a local HF directory to start from ("" = random init)
    policy_init: str            # workdir of a finished SFT run ("" = none)
    reward_init: str            # workdir of a finished reward-model run (PPO; "" = none)
    mesh: Mapping[str, int]
    axis_rules: tuple[tuple[str, tuple[str, ...]], ...]
    optim: OptimSettings
    train: TrainSettings
    data: DataSettings
    reward: RewardSettings
    ppo: PPOSettings
    dpo: DPOSettings
    bon: BestOfNSettings
    lora: LoRASettings

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunSettings:
        """Typed settings of a single-stage config; raises ConfigError naming the first bad
        field. Checks that depend on the device count are in :meth:`check_mesh`."""
        _check_top_level(config)
        top = {name: config.get(name, "") for name in typing.get_type_hints(_TopLevel)}
        check_types(_TopLevel, top, "")
        check_types(_TopLevel, {"reward_init": config.ppo.get("reward_init", "")}, "ppo.")
        model = _section(ModelConfig, config, "model")
        try:
            model.validate(vocab_known=False)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
        mesh = _section_dict(config, "mesh")
        for axis, size in mesh.items():
            if isinstance(size, bool) or not isinstance(size, int):
                fail(f"mesh.{axis}", size, "must be an integer (or -1: the remaining devices)")
        try:
            rules = parallel.rules_table(config.axis_rules)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.axis_rules={config.get('axis_rules')!r}: {e}; each rule "
                              "is (logical axis, mesh axis | tuple of mesh axes | None)") from None
        return cls(seed=config.seed, model=model, model_init=config.model_init,
                   policy_init=config.policy_init, reward_init=_reward_init(config), mesh=mesh,
                   axis_rules=tuple(rules.items()),
                   optim=_section(OptimSettings, config, "optim"),
                   train=_section(TrainSettings, config, "train"),
                   data=_section(DataSettings, config, "data"),
                   reward=_section(RewardSettings, config, "reward"),
                   ppo=_section(PPOSettings, config, "ppo"),
                   dpo=_section(DPOSettings, config, "dpo"),
                   bon=_section(BestOfNSettings, config, "bon"),
                   lora=_section(LoRASettings, config, "lora"))

    def __post_init__(self):
        m = self.model
        if self.data.max_len > m.max_seq_len:
            fail("data.max_len", self.data.max_len,
                 f"exceeds model.max_seq_len={m.max_seq_len}")
        r = self.reward
        if r.pair_length > m.max_seq_len:
            fail("reward.max_response_tokens", r.max_response_tokens,
                 f"with reward.max_prompt_tokens={r.max_prompt_tokens} and the EOS makes "
                 f"{r.pair_length} tokens, more than model.max_seq_len={m.max_seq_len}")
        p = self.ppo
        if p.prompt_length + p.response_length > m.max_seq_len:
            fail("ppo.response_length", p.response_length,
                 f"plus ppo.prompt_length={p.prompt_length} exceeds "
                 f"model.max_seq_len={m.max_seq_len}")
        if p.frozen_dtype and self.lora.rank:
            fail("ppo.frozen_dtype", p.frozen_dtype,
                 "applies to full training only: under LoRA the reference is the adapters' "
                 "frozen base, stored in lora.base_dtype; set that instead")

    @property
    def rules(self) -> dict[str, tuple[str, ...]]:
        """The logical-axis -> mesh-axes table (``parallel.rules_table`` form)."""
        return dict(self.axis_rules)

    def check_mesh(self, num_devices: int) -> None:
        """The mesh tiles ``num_devices`` and every batch splits over its data axes."""
        try:
            dp = parallel.data_parallel_size(self.mesh, num_devices)
        except ValueError as e:
            sizes = ", ".join(f"mesh.{axis}={size}" for axis, size in self.mesh.items())
            raise ConfigError(f"config.{sizes}: {str(e).removeprefix('mesh: ')}") from None
        t = self.train
        micro = t.batch_size // t.grad_accum
        if micro % dp:
            fail("train.batch_size", t.batch_size,
                 f"gives micro-batches of {micro}, not divisible by the data-parallel size "
                 f"{dp} (mesh.data x mesh.fsdp on {num_devices} devices)")
        p = self.ppo
        if p.minibatch_size % p.grad_accum or (p.minibatch_size // p.grad_accum) % dp:
            fail("ppo.grad_accum", p.grad_accum,
                 f"must split minibatches of {p.minibatch_size} into micro-batches "
                 f"divisible by the data-parallel size {dp}")
        if p.prompts_per_iteration % dp:
            fail("ppo.batch_size", p.batch_size,
                 f"over ppo.num_generations={p.num_generations} gives "
                 f"{p.prompts_per_iteration} prompts per iteration, not divisible by the "
                 f"data-parallel size {dp}")
