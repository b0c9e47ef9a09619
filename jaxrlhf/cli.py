"""Command line: ``jaxrlhf STAGE --config=configs/... --workdir=DIR [--config.a.b=v]``
(or ``python -m jaxrlhf ...``).

Configs are locked ml_collections files: a misspelt override fails naming the field and the
closest known ones, and ``jaxrlhf.config.validate`` rejects bad values before anything is
compiled. Every error the user can cause (``jaxrlhf.errors.JaxRLHFError``) is printed as
one line and exits with status 1; ``--debug`` (or ``JAXRLHF_DEBUG=1``) shows the traceback.
A finished stage prints one line of headline numbers; the pipeline adds the report's path.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrlhf import config as config_lib, parallel
from jaxrlhf.data import records as records_lib
from jaxrlhf.errors import ConfigError, DataError, JaxRLHFError, MissingInputError

COMMANDS = (*config_lib.PIPELINE_STAGES, "pipeline", "sample")
DEBUG_ENV = "JAXRLHF_DEBUG"
USAGE = (f"usage: jaxrlhf {{{','.join(COMMANDS[:-1])}}} --config=FILE --workdir=DIR "
         "[--config.field=value ...] [--debug]\n   or: jaxrlhf sample --checkpoint=RUN_DIR "
         "--prompts=FILE [--output=FILE]")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report.")
_DEBUG = flags.DEFINE_boolean("debug", False, "Show the traceback of every error "
                              f"(also ${DEBUG_ENV}=1).")
# `sample` only:
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "sample: workdir of an SFT or PPO run.")
_PROMPTS = flags.DEFINE_string("prompts", None,
                               "sample: a text file (one prompt a line) or JSONL with 'prompt'.")
_OUTPUT = flags.DEFINE_string("output", None, "sample: write JSONL here instead of printing.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "sample: tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "sample: softmax temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "sample: nucleus mass (1: all).")
_GREEDY = flags.DEFINE_boolean("greedy", False, "sample: argmax decoding.")
_SEED = flags.DEFINE_integer("seed", 0, "sample: random seed.")


def _stage(argv: list[str]) -> str:
    if len(argv) == 2 and argv[1] in COMMANDS:
        return argv[1]
    if len(argv) < 2:
        raise app.UsageError(f"no command given\n{USAGE}")
    unknown = " ".join(argv[1:])
    close = difflib.get_close_matches(argv[1], COMMANDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise app.UsageError(f"unknown command {unknown!r}{hint}\n{USAGE}")


def read_prompts(path: str) -> list[str]:
    """One prompt per line of a text file, or the string 'prompt' field of each JSONL /
    JSON row."""
    if not os.path.exists(path):
        raise MissingInputError(f"--prompts={path}: no such file")
    if not path.endswith((".jsonl", ".jsonl.gz", ".json")):
        prompts = [line.rstrip("\n") for _, line in records_lib.text_lines(path) if line.strip()]
        if not prompts:
            raise DataError(f"{path}: no prompts (the file has no non-blank line)")
        return prompts
    prompts = []
    for origin, row in records_lib.load_records(path):
        if not isinstance(row.get("prompt"), str):
            raise DataError(f"{origin}: a prompt row needs a string 'prompt' field, got "
                            + (records_lib.describe(row["prompt"]) if "prompt" in row
                               else f"keys {sorted(row)}"))
        prompts.append(row["prompt"])
    return prompts


def sample_main() -> None:
    from jaxrlhf import sampling, workdir
    from jaxrlhf.models.transformer import CausalLM
    if not _CHECKPOINT.value or not _PROMPTS.value:
        raise app.UsageError("sample needs --checkpoint=RUN_DIR and --prompts=FILE")
    prompts = read_prompts(_PROMPTS.value)
    policy = workdir.load_model(_CHECKPOINT.value, CausalLM)
    responses = sampling.complete(
        policy.graphdef, policy.params, policy.tokenizer, prompts,
        max_new_tokens=_MAX_NEW.value, seed=_SEED.value, temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value, greedy=_GREEDY.value)
    rows = [{"prompt": p, "completion": r} for p, r in zip(prompts, responses)]
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        for row in rows:
            print(f"{row['prompt']!r} -> {row['completion']!r}")


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def summary_line(stage: str, summary: Mapping[str, Any], workdir: str) -> str:
    """The headline numbers of a finished stage or pipeline, in one line."""
    parts = {
        "sft": lambda s: f"SFT held-out loss {_num(s.get('first_eval_loss'))} -> "
                         f"{_num(s.get('eval_loss'))}",
        "reward": lambda s: f"reward model held-out accuracy {_num(s.get('eval_accuracy'))}",
        "ppo": lambda s: f"PPO gold {_num(s.get('gold_before'))} -> {_num(s.get('gold_after'))}"
                         f", KL {_num(s.get('kl'), 2)} nats",
    }
    if stage == "pipeline":
        body = "; ".join(parts[name](summary.get(name, {})) for name in parts)
        report = os.path.join(workdir, "report.md")
        return f"pipeline done: {body}. Report: {report}"
    return f"{stage} done: {parts[stage](summary)}. Workdir: {workdir}"


def check_overrides(argv: list[str]) -> None:
    """Every ``--config.NAME=VALUE`` names a field of the ``--config`` file (else a
    ConfigError suggesting the closest), checked before absl parses the flags."""
    names = [arg[len("--config."):].split("=", 1)[0] for arg in argv
             if arg.startswith("--config.")]
    paths = [arg.split("=", 1)[1] if arg.startswith("--config=") else after
             for arg, after in zip(argv, argv[1:] + [""])
             if arg.startswith("--config=") or arg == "--config"]
    if not names or not paths:
        return
    if not os.path.isfile(paths[-1]):
        raise MissingInputError(f"--config={paths[-1]}: no such config file")
    config = config_lib.load_config_file(paths[-1])
    known = set(config_lib.field_names(config))
    for name in names:
        if name not in known:
            raise ConfigError(config_lib.unknown_field_message(config, name))


def main(argv: list[str]) -> None:
    stage = _stage(argv)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    parallel.initialize_distributed()
    if stage == "sample":
        return sample_main()
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    config = _CONFIG.value
    config_lib.validate(config, jax.device_count())
    from jaxrlhf import pipeline
    run_stage = pipeline.train if stage == "pipeline" else pipeline.TRAINERS[stage]
    summary = run_stage(config, _WORKDIR.value)
    if jax.process_index() == 0:
        print(summary_line(stage, summary, _WORKDIR.value))


def _debug(argv: list[str]) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


def _fail(error: JaxRLHFError) -> None:
    print(f"jaxrlhf: error: {error}", file=sys.stderr)
    sys.exit(1)


def run() -> None:
    argv = list(sys.argv)
    try:
        check_overrides(argv)
    except JaxRLHFError as e:
        if _debug(argv):
            raise
        _fail(e)

    def guarded(args: list[str]) -> None:
        try:
            main(args)
        except JaxRLHFError as e:
            if _debug(argv):
                raise
            _fail(e)

    app.run(guarded, argv=argv)
