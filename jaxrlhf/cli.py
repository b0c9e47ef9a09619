"""Command line: ``python -m jaxrlhf STAGE --config=configs/... --workdir=DIR [--config.a.b=v]``.

Configs are locked ml_collections files: a misspelt override fails naming the field, and
``jaxrlhf.config.validate`` rejects bad values before anything is compiled.
"""
from __future__ import annotations

import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrlhf import config as config_lib, parallel

COMMANDS = (*config_lib.STAGES, "pipeline", "sample", "export")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report.")
# `sample` only:
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "sample, bon, export: workdir of a run that trained a policy.")
_PROMPTS = flags.DEFINE_string("prompts", None,
                               "sample: a text file (one prompt a line) or JSONL with 'prompt'.")
_OUTPUT = flags.DEFINE_string("output", None, "sample: write JSONL here instead of printing; "
                              "export: the HF directory to write.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "sample: tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "sample: softmax temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "sample: nucleus mass (1: all).")
_GREEDY = flags.DEFINE_boolean("greedy", False, "sample: argmax decoding.")
_SEED = flags.DEFINE_integer("seed", 0, "sample: random seed.")
# `bon` (they override config.policy_init, config.ppo.reward_init, config.bon.n; --config
# is optional for it) and `export`:
_REWARD = flags.DEFINE_string("reward", None, "bon: workdir of a reward-model run.")
_N = flags.DEFINE_integer("n", None, "bon: samples per prompt.")
_DRY_RUN = flags.DEFINE_boolean(
    "dry_run", False, "compile the stage's step and print its peak memory per device (XLA "
    "memory analysis) without running it; --workdir is not needed.")


def _stage(argv: list[str]) -> str:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: python -m jaxrlhf {{{','.join(COMMANDS[:-2])}}} --config=FILE --workdir=DIR "
            "[--config.field=value ...]\n   or: python -m jaxrlhf sample --checkpoint=RUN_DIR "
            "--prompts=FILE [--output=FILE]\n   or: python -m jaxrlhf bon --checkpoint=RUN_DIR "
            "--reward=RM_DIR --n=16 --workdir=DIR [--config=FILE]\n   or: python -m jaxrlhf "
            "export --checkpoint=RUN_DIR --output=HF_DIR")
    return argv[1]


def read_prompts(path: str) -> list[str]:
    """One prompt per line of a text file, or the 'prompt' field of each JSONL row."""
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not path.endswith((".jsonl", ".json")):
        return lines
    prompts = []
    for number, line in enumerate(lines, start=1):
        row = json.loads(line)
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"{path}:{number}: a JSONL prompt row needs a 'prompt' field")
        prompts.append(row["prompt"])
    return prompts


def sample_main() -> None:
    from jaxrlhf import sampling, workdir
    from jaxrlhf.models.transformer import CausalLM
    if not _CHECKPOINT.value or not _PROMPTS.value:
        raise app.UsageError("sample needs --checkpoint=RUN_DIR and --prompts=FILE")
    policy = workdir.load_model(_CHECKPOINT.value, CausalLM)
    prompts = read_prompts(_PROMPTS.value)
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


def export(run_dir: str, output: str) -> None:
    """Write the policy of the run in ``run_dir`` (LoRA adapters merged) and its tokenizer
    as a HF checkpoint directory ``output``."""
    from flax import nnx
    from jaxrlhf import workdir
    from jaxrlhf.models import hf
    from jaxrlhf.models.transformer import CausalLM
    policy = workdir.load_model(run_dir, CausalLM)
    hf.save_causal_lm(nnx.merge(policy.graphdef, policy.params), output)
    policy.tokenizer.save_pretrained(output)


def export_main() -> None:
    if not _CHECKPOINT.value or not _OUTPUT.value:
        raise app.UsageError("export needs --checkpoint=RUN_DIR and --output=HF_DIR")
    export(_CHECKPOINT.value, _OUTPUT.value)
    print(f"wrote {_OUTPUT.value}")


def bon_config():
    """The ``bon`` config: ``--config`` (or the defaults) with ``--checkpoint``,
    ``--reward`` and ``--n`` applied."""
    config = _CONFIG.value if _CONFIG.value is not None else config_lib.base_config().lock()
    for name, flag in (("policy_init", _CHECKPOINT), ("ppo.reward_init", _REWARD),
                       ("bon.n", _N)):
        if flag.value is not None:
            config_lib.override(config, name, flag.value)
    return config


def main(argv: list[str]) -> None:
    stage = _stage(argv)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    parallel.initialize_distributed()
    if stage == "sample":
        return sample_main()
    if stage == "export":
        return export_main()
    config = bon_config() if stage == "bon" else _CONFIG.value
    if config is None or (_WORKDIR.value is None and not _DRY_RUN.value):
        raise app.UsageError("--config and --workdir are required")
    config_lib.validate(config, jax.device_count())
    if _DRY_RUN.value:
        from jaxrlhf import dry_run
        result = dry_run.report(stage, config)
        print(json.dumps(result, indent=2))
        print("\n".join(dry_run.summary_lines(result)))
        return
    from jaxrlhf import pipeline
    run = pipeline.train if stage == "pipeline" else pipeline.TRAINERS[stage]
    print(run(config, _WORKDIR.value))


def run() -> None:
    app.run(main, argv=sys.argv)
