"""Command line: ``python -m jaxrlhf STAGE --config=configs/... --workdir=DIR [--config.a.b=v]``.

Configs are locked ml_collections files: a misspelt override fails naming the field, and
``jaxrlhf.config.validate`` rejects bad values before anything is compiled.
"""
from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrlhf import config as config_lib, parallel

STAGES = ("sft", "reward", "ppo")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report.")


def _stage(argv: list[str]) -> str:
    if len(argv) != 2 or argv[1] not in STAGES:
        raise app.UsageError(f"usage: python -m jaxrlhf {{{','.join(STAGES)}}} "
                             "--config=FILE --workdir=DIR [--config.field=value ...]")
    return argv[1]


def main(argv: list[str]) -> None:
    stage = _stage(argv)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    parallel.initialize_distributed()
    config = _CONFIG.value
    config_lib.validate(config, jax.device_count())
    if stage == "sft":
        from jaxrlhf.trainers import sft as trainer
    elif stage == "reward":
        from jaxrlhf.trainers import reward as trainer
    elif stage == "ppo":
        from jaxrlhf.trainers import ppo as trainer
    summary = trainer.train(config, _WORKDIR.value)
    print(summary)


def run() -> None:
    app.run(main, argv=sys.argv)
