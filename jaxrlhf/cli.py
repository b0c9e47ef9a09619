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
import functools
import json
import os
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrlhf import config as config_lib, parallel, runfiles, stages as stages_lib
from jaxrlhf.data import records as records_lib
from jaxrlhf.errors import (ConfigError, DataError, JaxRLHFError, MissingInputError,
                            UsageError)

COMMANDS = (*stages_lib.STAGES, stages_lib.PIPELINE, "sample", "export")
DEBUG_ENV = "JAXRLHF_DEBUG"
USAGE = (f"usage: jaxrlhf {{{','.join(COMMANDS[:-2])}}} --config=FILE --workdir=DIR "
         "[--config.field=value ...] [--debug] [--dry_run]\n"
         "   or: jaxrlhf sample --checkpoint=RUN_DIR --prompts=FILE [--output=FILE]\n"
         "   or: jaxrlhf bon --checkpoint=RUN_DIR --reward=RM_DIR --n=16 --workdir=DIR "
         "[--config=FILE]\n"
         "   or: jaxrlhf export --checkpoint=RUN_DIR --output=HF_DIR")


# The commands that are not stages: their one line and an example (a stage's are its
# ``Stage.help`` and the ``python -m jaxrlhf ...`` line of its module's docstring).
OTHER_COMMANDS = {
    stages_lib.PIPELINE: ("stages in sequence, each wired to the earlier ones (default SFT -> "
                          "reward -> PPO), then a report",
                          "python -m jaxrlhf pipeline --config=configs/pipeline/quickstart.py "
                          "--workdir=runs/quickstart"),
    "sample": ("complete prompts with a trained policy",
               "python -m jaxrlhf sample --checkpoint=runs/sft --prompts=prompts.txt"),
    "export": ("write a trained policy as a Hugging Face checkpoint directory",
               "python -m jaxrlhf export --checkpoint=runs/ppo --output=hf/ppo"),
}
# The flags each command reads (``--debug`` too); a stage or the pipeline: STAGE_FLAGS.
STAGE_FLAGS = ("config", "workdir", "dry_run")
COMMAND_FLAGS = {
    "bon": ("config", "checkpoint", "reward", "n", "workdir", "dry_run"),
    "sample": ("checkpoint", "prompts", "output", "max_new_tokens", "temperature", "top_k",
               "top_p", "greedy", "seed"),
    "export": ("checkpoint", "output"),
}
# The sections every stage's config holds, beside the stage's own (``Stage.sections``).
SHARED_SECTIONS = ("model", "mesh", "optim", "train", "data", "lora", "logging")


def command_line(command: str) -> str:
    """The command's one-line purpose."""
    if command in OTHER_COMMANDS:
        return OTHER_COMMANDS[command][0]
    return stages_lib.get(command).help


def command_example(command: str) -> str:
    """One complete invocation of ``command``: the first ``python -m jaxrlhf ...`` of its
    module's docstring for a stage."""
    if command in OTHER_COMMANDS:
        return OTHER_COMMANDS[command][1]
    doc = sys.modules[stages_lib.get(command).train.__module__].__doc__ or ""
    found = re.search(rf"python -m jaxrlhf {command} [^`]*", doc)
    if found is None:
        raise AssertionError(f"the docstring of the {command!r} stage's module has no "
                             f"``python -m jaxrlhf {command} ...`` example")
    return " ".join(found.group(0).split())


def help_text() -> str:
    """``jaxrlhf --help``: the usage and every command with its one line (the stages' from
    the stage table)."""
    names = (*stages_lib.STAGES, *OTHER_COMMANDS)   # the table as it is now
    width = max(map(len, names))
    return "\n".join([USAGE, "", "commands:",
                      *(f"  {name:<{width}}  {command_line(name)}" for name in names),
                      "", "jaxrlhf COMMAND --help: the command's flags and an example"])


def command_help(command: str) -> str:
    """``jaxrlhf COMMAND --help``: its purpose, the flags it reads with their help, the
    config sections it reads, and an example."""
    _flags()   # registered, so that their help can be read
    names = (*COMMAND_FLAGS.get(command, STAGE_FLAGS), "debug")
    rows = [(f"--{name}", flags.FLAGS[name].help) for name in names]
    if command == stages_lib.PIPELINE:
        rows.insert(1, ("--config.STAGE.FIELD=VALUE", "set one field of one stage's config "
                        "(e.g. --config.ppo.train.steps=8)"))
    elif "config" in names:
        sections = (*SHARED_SECTIONS, *stages_lib.get(command).sections)
        rows.insert(1, ("--config.FIELD=VALUE",
                        "set one field of the config; its sections: " + ", ".join(sections)))
    width = max(len(flag) for flag, _ in rows)
    return "\n".join([f"jaxrlhf {command}: {command_line(command)}", "", "flags:",
                      *(f"  {flag:<{width}}  {text}" for flag, text in rows), "", "example:",
                      f"  {command_example(command)}"])


def unknown_command_message(given: str) -> str:
    """One line for a command that is not one of COMMANDS (or none at all)."""
    close = difflib.get_close_matches(given, COMMANDS, n=1)
    what = f"unknown command {given!r}" if given else "no command given"
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return f"{what}{hint} Commands: {', '.join(COMMANDS)} (jaxrlhf --help describes each)"


@functools.cache
def _flags() -> types.SimpleNamespace:
    """The command line's flags, registered in absl's global registry when a command runs
    (``run``), never on import: importing ``jaxrlhf.cli`` (for ``export`` or
    ``summary_line``) leaves a notebook's or another program's flags alone."""
    return types.SimpleNamespace(
        config=config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                               lock_config=True),
        workdir=flags.DEFINE_string("workdir", None,
                                    "Directory for checkpoints, metrics, report."),
        debug=flags.DEFINE_boolean("debug", False, "Show the traceback of every error "
                                   f"(also ${DEBUG_ENV}=1)."),
        checkpoint=flags.DEFINE_string(
            "checkpoint", None, "sample, bon, export: workdir of a run that trained a policy."),
        prompts=flags.DEFINE_string(
            "prompts", None, "sample: a text file (one prompt a line) or JSONL with 'prompt'."),
        output=flags.DEFINE_string("output", None, "sample: write JSONL here instead of "
                                   "printing; export: the HF directory to write."),
        max_new_tokens=flags.DEFINE_integer("max_new_tokens", 32, "sample: tokens to generate."),
        temperature=flags.DEFINE_float("temperature", 0.7, "sample: softmax temperature."),
        top_k=flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0: all)."),
        top_p=flags.DEFINE_float("top_p", 1.0, "sample: nucleus mass (1: all)."),
        greedy=flags.DEFINE_boolean("greedy", False, "sample: argmax decoding."),
        seed=flags.DEFINE_integer("seed", 0, "sample: random seed."),
        # `bon` (they override config.policy_init, config.reward_init, config.bon.n;
        # --config is optional for it):
        reward=flags.DEFINE_string("reward", None, "bon: workdir of a reward-model run."),
        n=flags.DEFINE_integer("n", None, "bon: samples per prompt."),
        dry_run=flags.DEFINE_boolean(
            "dry_run", False, "compile the stage's step and print its peak memory per device "
            "(XLA memory analysis) without running it; --workdir is not needed."))


def _stage(argv: list[str]) -> str:
    if len(argv) == 2 and argv[1] in COMMANDS:
        return argv[1]
    raise UsageError(f"one command and its flags, got {' '.join(argv[1:])!r}\n{USAGE}")


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
    f = _flags()
    if not f.checkpoint.value or not f.prompts.value:
        raise UsageError("sample needs --checkpoint=RUN_DIR and --prompts=FILE")
    for flag, ok, expected in [(f.max_new_tokens, f.max_new_tokens.value >= 1, "at least 1"),
                               (f.temperature, f.temperature.value > 0, "positive"),
                               (f.top_k, f.top_k.value >= 0, "0 (all) or more"),
                               (f.top_p, 0 < f.top_p.value <= 1, "in (0, 1]")]:
        if not ok:
            raise ConfigError(f"--{flag.name}={flag.value} must be {expected}")
    prompts = read_prompts(f.prompts.value)
    policy = workdir.load_model(f.checkpoint.value, CausalLM)
    responses = sampling.complete(
        policy.graphdef, policy.params, policy.tokenizer, prompts,
        max_new_tokens=f.max_new_tokens.value, seed=f.seed.value,
        temperature=f.temperature.value, top_k=f.top_k.value, top_p=f.top_p.value,
        greedy=f.greedy.value)
    rows = [{"prompt": p, "completion": r} for p, r in zip(prompts, responses)]
    if f.output.value:
        runfiles.write_text(f.output.value, "".join(json.dumps(row) + "\n" for row in rows))
    else:
        for row in rows:
            print(f"{row['prompt']!r} -> {row['completion']!r}")


def export(run_dir: str, output: str) -> None:
    """Write the policy of the run in ``run_dir`` (LoRA adapters merged) and its tokenizer
    as a HF checkpoint directory ``output``."""
    from flax import nnx
    from jaxrlhf import workdir
    from jaxrlhf.models import hf
    from jaxrlhf.models.transformer import CausalLM
    policy = workdir.load_model(run_dir, CausalLM)
    if runfiles.is_writer():     # one process writes the checkpoint
        hf.save_causal_lm(nnx.merge(policy.graphdef, policy.params), output)
        policy.tokenizer.save_pretrained(output)


def export_main() -> None:
    f = _flags()
    if not f.checkpoint.value or not f.output.value:
        raise UsageError("export needs --checkpoint=RUN_DIR and --output=HF_DIR")
    export(f.checkpoint.value, f.output.value)
    print(f"wrote {f.output.value}")


def bon_config():
    """The ``bon`` config: ``--config`` (or the defaults) with ``--checkpoint``,
    ``--reward`` and ``--n`` applied."""
    f = _flags()
    config = f.config.value if f.config.value is not None else config_lib.base_config().lock()
    for name, flag in (("policy_init", f.checkpoint), ("reward_init", f.reward),
                       ("bon.n", f.n)):
        if flag.value is not None:
            config_lib.override(config, name, flag.value)
    return config


def summary_line(stage: str, summary: Mapping[str, Any], workdir: str,
                 stages: list[tuple[str, str]] | None = None) -> str:
    """The headline numbers of a finished stage, or of each stage of a pipeline
    (``stages``: its ``(name, command)`` pairs; default SFT -> reward -> PPO), in one line."""
    if stage == stages_lib.PIPELINE:
        stages = stages or [(name, name) for name in stages_lib.DEFAULT_PIPELINE]
        body = "; ".join(("" if name == command else f"{name}: ")
                         + stages_lib.get(command).headline(summary.get(name, {}))
                         for name, command in stages)
        return f"pipeline done: {body}. Report: {os.path.join(workdir, 'report.md')}"
    return f"{stage} done: {stages_lib.get(stage).headline(summary)}. Workdir: {workdir}"


def check_overrides(argv: list[str]) -> None:
    """The ``--config`` file loads (else a one-line error naming it) and every
    ``--config.NAME=VALUE`` names one of its fields (else a ConfigError suggesting the
    closest), checked before absl parses the flags."""
    names = [arg[len("--config."):].split("=", 1)[0] for arg in argv
             if arg.startswith("--config.")]
    paths = [arg.split("=", 1)[1] if arg.startswith("--config=") else after
             for arg, after in zip(argv, argv[1:] + [""])
             if arg.startswith("--config=") or arg == "--config"]
    if not paths:
        return
    config = config_lib.load_config_file(paths[-1])
    known = set(config_lib.field_names(config))
    for name in names:
        if name not in known:
            raise ConfigError(config_lib.unknown_field_message(config, name))


def main(argv: list[str]) -> None:
    stage, f = _stage(argv), _flags()
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    parallel.initialize_distributed()
    if stage == "sample":
        return sample_main()
    if stage == "export":
        return export_main()
    config = bon_config() if stage == "bon" else f.config.value
    if config is None or (f.workdir.value is None and not f.dry_run.value):
        raise UsageError("--config and --workdir are required")
    stages_lib.validate(stage, config, jax.device_count())
    if f.dry_run.value:
        from jaxrlhf import dry_run
        result = dry_run.report(stage, config)
        print(json.dumps(result, indent=2))
        print("\n".join(dry_run.summary_lines(result)))
        return
    from jaxrlhf import pipeline
    summary = pipeline.run(stage, config, f.workdir.value)
    if runfiles.is_writer():
        stages = stages_lib.pipeline_stages(config) if stage == stages_lib.PIPELINE else None
        print(summary_line(stage, summary, f.workdir.value, stages))


def _debug(argv: list[str]) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


def _fail(error: JaxRLHFError) -> None:
    print(f"jaxrlhf: error: {error}", file=sys.stderr)
    sys.exit(1)


def run() -> None:
    argv = list(sys.argv)
    if argv[1:] in (["--help"], ["-h"], ["help"], ["--helpfull"]):
        print(help_text())
        return
    given = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else ""
    if given not in COMMANDS:
        _fail(UsageError(unknown_command_message(given)))
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv[2:]):
        print(command_help(given))
        return
    _flags()
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
