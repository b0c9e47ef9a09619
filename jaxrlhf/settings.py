"""Typed, frozen settings made from a run's ``ConfigDict`` at the boundary, validated once.

The command line and experiment files speak ``ml_collections.ConfigDict`` (locked, so a
misspelt field is an error); everything below the stage shells receives these dataclasses
instead. They are immutable and hashable, so jitted code can close over them (or take them
as static arguments) without reading a mutable dict. Every check names the offending config
field (``config.ppo.clip=-1 must be >= 0``) and raises ``ConfigError``. Every field's
value must have its declared type (an ``int`` field an integer, a ``float`` field a finite
number, ...) before any range is checked. The sections themselves are in
``jaxrlhf.sections``; every field's default is written once, on its dataclass field, and
``jaxrlhf.config.base_config`` is built from these classes. A renamed field keeps its old
name for one release (:data:`ALIASES`): setting it sets the new field and prints one notice.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxrlhf import parallel
from jaxrlhf.checks import check_types, fail
from jaxrlhf.errors import ConfigError
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.sections import (BestOfNSettings, DataSettings, DPOSettings, LoggingSettings,
                              LoRASettings, OnlineDPOSettings, OptimSettings, PPOSettings,
                              PretrainSettings, RewardSettings, SamplingSettings, TrainSettings)


# Deprecated name -> the field (or fields) it now sets. Kept for one release (removed in 0.2).
ALIASES: dict[str, str | tuple[str, ...]] = {
    "ppo.learning_rate": "optim.learning_rate",
    "ppo.adam_eps": "optim.eps",
    "ppo.batch_size": "train.batch_size",
    "ppo.reward_init": "reward_init",
    "ppo.clip": ("ppo.clip_low", "ppo.clip_high"),
    "reward.source": "data.source",
    "reward.split": "data.split",
    "reward.eval_source": "data.eval_source",
    "reward.eval_split": "data.eval_split",
    **{f"ppo.{name}": f"sampling.{name}" for name in (
        "temperature", "top_k", "top_p", "prompt_length", "response_length",
        "num_eval_prompts", "truncate_token_id", "truncate_min_length",
        "penalize_missing_eos", "missing_eos_penalty")},
}
_NOTIFIED: set[str] = set()   # aliases whose notice this process has printed


def alias_targets(old: str) -> tuple[str, ...]:
    """The fields the deprecated name ``old`` (:data:`ALIASES`) sets."""
    new = ALIASES[old]
    return (new,) if isinstance(new, str) else new


def _notice_once(old: str, new: tuple[str, ...]) -> None:
    if old not in _NOTIFIED:
        _NOTIFIED.add(old)
        names = " and ".join(f"config.{name}" for name in new)
        print(f"jaxrlhf: config.{old} is deprecated and will be removed in 0.2: set "
              f"{names} instead", file=sys.stderr)


def _pop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part, {})
    return tree.pop(leaf, None) if isinstance(tree, dict) else None


def resolve_aliases(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``config`` as a plain dict, each deprecated field (:data:`ALIASES`) removed and, when
    set, its value given to its new name — as ``--config.NEW=VALUE`` would, over what the
    config file set there — with one notice per name and process."""
    tree = config.to_dict()
    for old in ALIASES:
        value = _pop(tree, old)
        if value is None:
            continue
        names = alias_targets(old)
        for name in names:
            *parents, leaf = name.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        _notice_once(old, names)
    return tree


def _section_dict(tree: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = tree.get(name)
    if not isinstance(section, Mapping):
        raise ConfigError(f"config.{name} must be a section of fields, got {section!r}")
    return dict(section)


def _section(cls, tree: Mapping[str, Any], name: str):
    """``cls`` from the config section ``name``: every field present, known and typed."""
    values = _section_dict(tree, name)
    fields = {f.name for f in dataclasses.fields(cls)}
    for field in sorted(set(values) - fields):
        raise ConfigError(_unknown(f"{name}.{field}", [f"{name}.{f}" for f in sorted(fields)]))
    check_types(cls, values, f"{name}.")
    return cls(**values)


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; the fields there are {known}"
    return f"unknown config field {name!r} (set in the config file){hint}"


# Logical axis -> mesh axis (or None: replicated); batches use 'batch' (docs/design.md, rule 4).
AXIS_RULES = (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"),
              ("mlp", "tensor"), ("heads", "tensor"), ("kv", "tensor"), ("layers", None))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything one stage reads, typed, with every default. Build with
    :meth:`from_config`; ``base_config()`` is these defaults as a ``ConfigDict``."""
    seed: int = 0
    model: ModelConfig = ModelConfig()
    model_init: str = ""        # a local HF directory (config.json + *.safetensors) to start from
    policy_init: str = ""       # workdir of a finished run that trained a policy ("" = none)
    reward_init: str = ""       # workdir of a finished reward-model run (PPO, best-of-n)
    # sizes of the (data, fsdp, tensor) mesh axes; -1 takes the remaining devices
    mesh: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    axis_rules: tuple = AXIS_RULES
    optim: OptimSettings = OptimSettings()
    train: TrainSettings = TrainSettings()
    data: DataSettings = DataSettings()
    sampling: SamplingSettings = SamplingSettings()
    reward: RewardSettings = RewardSettings()
    ppo: PPOSettings = PPOSettings()
    dpo: DPOSettings = DPOSettings()
    online_dpo: OnlineDPOSettings = OnlineDPOSettings()
    bon: BestOfNSettings = BestOfNSettings()
    pretrain: PretrainSettings = PretrainSettings()
    lora: LoRASettings = LoRASettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunSettings:
        """Typed settings of a single-stage config; raises ConfigError naming the first bad
        field. Checks that depend on the stage or the device count are the stage's
        (``jaxrlhf.stages.validate``)."""
        tree = resolve_aliases(config)
        known = [*TOP_LEVEL, *SECTIONS]
        for name in tree:
            if name not in known:
                raise ConfigError(_unknown(name, known))
        top = {name: tree.get(name, getattr(cls, name)) for name in TOP_LEVEL}
        check_types(cls, top, "")
        model = _section(ModelConfig, tree, "model")
        try:
            model.validate(vocab_known=False)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
        mesh = _section_dict(tree, "mesh")
        for axis, size in mesh.items():
            if isinstance(size, bool) or not isinstance(size, int):
                fail(f"mesh.{axis}", size, "must be an integer (or -1: the remaining devices)")
        try:
            rules = parallel.rules_table(tree.get("axis_rules"))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.axis_rules={tree.get('axis_rules')!r}: {e}; each rule "
                              "is (logical axis, mesh axis | tuple of mesh axes | None)") from None
        sections = {name: _section(SECTION_TYPES[name], tree, name) for name in SECTION_TYPES}
        return cls(**top, model=model, mesh=mesh, axis_rules=tuple(rules.items()), **sections)

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
        s = self.sampling
        if s.prompt_length + s.response_length > m.max_seq_len:
            fail("sampling.response_length", s.response_length,
                 f"plus sampling.prompt_length={s.prompt_length} exceeds "
                 f"model.max_seq_len={m.max_seq_len}")
        if self.ppo.frozen_dtype and self.lora.rank:
            fail("ppo.frozen_dtype", self.ppo.frozen_dtype,
                 "applies to full training only: under LoRA the reference is the adapters' "
                 "frozen base, stored in lora.base_dtype; set that instead")

    @property
    def rules(self) -> dict[str, tuple[str, ...]]:
        """The logical-axis -> mesh-axes table (``parallel.rules_table`` form)."""
        return dict(self.axis_rules)

    @property
    def prompts_per_iteration(self) -> int:
        """PPO's ``train.batch_size`` responses are ``ppo.num_generations`` samples of this
        many prompts."""
        return self.train.batch_size // self.ppo.num_generations

    @property
    def prompts_drawn_per_iteration(self) -> int:
        """The prompts an iteration samples: :attr:`prompts_per_iteration`, times
        ``ppo.dynamic_sampling_pool`` under dynamic sampling (the pool it keeps them from)."""
        p = self.ppo
        return self.prompts_per_iteration * (p.dynamic_sampling_pool if p.dynamic_sampling else 1)

    @property
    def minibatch_size(self) -> int:
        """Responses in one PPO minibatch."""
        return self.train.batch_size // self.ppo.num_minibatches

    def data_parallel_size(self, num_devices: int) -> int:
        """The devices a batch is split over (``mesh.data x mesh.fsdp``); a ConfigError when
        the mesh does not tile ``num_devices``."""
        try:
            return parallel.data_parallel_size(self.mesh, num_devices)
        except ValueError as e:
            sizes = ", ".join(f"mesh.{axis}={size}" for axis, size in self.mesh.items())
            raise ConfigError(f"config.{sizes}: {str(e).removeprefix('mesh: ')}") from None

    def check_batches(self, num_devices: int) -> None:
        """A supervised stage: each micro-batch of ``train.batch_size / train.grad_accum``
        rows splits over the data-parallel devices."""
        dp, t = self.data_parallel_size(num_devices), self.train
        micro = t.batch_size // t.grad_accum
        if micro % dp:
            fail("train.batch_size", t.batch_size,
                 f"gives micro-batches of {micro}, not divisible by the data-parallel size "
                 f"{dp} (mesh.data x mesh.fsdp on {num_devices} devices)")

    def check_ppo_batches(self, num_devices: int) -> None:
        """PPO: the iteration's responses split into prompts, minibatches and micro-batches,
        and each of these over the data-parallel devices."""
        dp, p = self.data_parallel_size(num_devices), self.ppo
        p.check_batch(self.train.batch_size)
        if (self.minibatch_size // p.grad_accum) % dp:
            fail("ppo.grad_accum", p.grad_accum,
                 f"must split minibatches of {self.minibatch_size} into micro-batches "
                 f"divisible by the data-parallel size {dp}")
        if self.prompts_per_iteration % dp:
            fail("train.batch_size", self.train.batch_size,
                 f"over ppo.num_generations={p.num_generations} gives "
                 f"{self.prompts_per_iteration} prompts per iteration, not divisible by the "
                 f"data-parallel size {dp}")


TOP_LEVEL = ("seed", "model_init", "policy_init", "reward_init")
# The typed sections of a single-stage config (beside model, mesh and axis_rules).
SECTION_TYPES = {f.name: type(f.default) for f in dataclasses.fields(RunSettings)
                 if dataclasses.is_dataclass(f.default) and f.name != "model"}
SECTIONS = ("model", "mesh", "axis_rules", *SECTION_TYPES)


def field_default(dotted: str) -> Any:
    """The default of the field ``section.name`` (or a top-level ``name``)."""
    node: Any = RunSettings()
    for part in dotted.split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def logging_settings(config: ml_collections.ConfigDict) -> LoggingSettings:
    """The ``logging`` section of a stage's config, checked as :meth:`RunSettings.from_config`
    checks it; its defaults (no tracker) for a config without one."""
    tree = config.to_dict()
    return _section(LoggingSettings, tree, "logging") if "logging" in tree else LoggingSettings()
