"""The typed sections of a run's settings — ``optim``, ``train``, ``data``, ``sampling``,
``reward``, ``ppo``, ``dpo``, ``online_dpo``, ``bon``, ``pretrain``, ``lora``, ``logging``.

Each section is a frozen dataclass that carries its fields' defaults (the one place they
are written: ``jaxrlhf.config.base_config`` is built from them) and whose ``__post_init__``
checks its own ranges and relations, naming the offending config field
(``config.ppo.clip=-1 must be >= 0``) in a ``ConfigError``. ``jaxrlhf.settings.RunSettings``
reads them from a ``ConfigDict``, after ``jaxrlhf.checks.check_types`` has checked every
value's kind.
"""
from jaxrlhf.sections.common import (BEST_MODES, BON_SPLITS, MIN_BPE_VOCAB, BestOfNSettings,
                                     DataSettings, DPOSettings, LoggingSettings, LoRASettings,
                                     OptimSettings, PretrainSettings, RewardSettings,
                                     SamplingSettings, TrainSettings)
from jaxrlhf.sections.online_dpo import OnlineDPOSettings
from jaxrlhf.sections.ppo import FROZEN_DTYPES, REWARD_SOURCES, VALUE_INITS, PPOSettings

__all__ = ["BEST_MODES", "BON_SPLITS", "FROZEN_DTYPES", "MIN_BPE_VOCAB", "REWARD_SOURCES",
           "VALUE_INITS", "BestOfNSettings", "DataSettings", "DPOSettings", "LoggingSettings",
           "LoRASettings", "OnlineDPOSettings", "OptimSettings", "PPOSettings",
           "PretrainSettings", "RewardSettings", "SamplingSettings", "TrainSettings"]
