"""The base config every experiment starts from, and its start-up validation.

Configs are ml_collections ``ConfigDict``s, locked so that a misspelt override is an error
naming the field. ``validate`` checks values before anything is compiled (docs/design.md,
rule 6) by building the typed settings of ``jaxrlhf.settings``, which the stages then use.
"""
from __future__ import annotations

import difflib
import os
from typing import Any

import ml_collections

from jaxrlhf.errors import ConfigError, JaxRLHFError, MissingInputError
from jaxrlhf.models.presets import PRESETS
from jaxrlhf.settings import RunSettings

def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every stage; an experiment config states only what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Decoder-only transformer (jaxrlhf.models.ModelConfig). vocab_size 0: from the tokenizer.
    c.model = ml_collections.ConfigDict(dict(
        family="gpt2", vocab_size=0, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
        d_ff=256, max_seq_len=64, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=True,
        qkv_bias=True, dtype="float32", param_dtype="float32", scan_layers=False,
        remat="none"))
    # Long-context RoPE (HF rope_type "linear" / "llama3"; models.transformer.rope_frequencies),
    # and logits_chunk > 0: log-probs and the LM loss in chunks of that many positions, never
    # holding [batch, seq, vocab] fp32 logits (jaxrlhf.scoring).
    c.model.update(dict(rope_type="default", rope_factor=1.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_len=8192, logits_chunk=0))
    # A local HF directory (config.json + *.safetensors) to start from; "" = random init.
    c.model_init = ""
    # Workdir of a finished SFT run: the reward and PPO stages start from its policy.
    c.policy_init = ""
    # Workdir of a finished reward-model run: PPO's reward model (formerly ppo.reward_init).
    c.reward_init = ""

    # Mesh: sizes of (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical axis -> mesh axis (or None: replicated). Batches use 'batch'.
    c.axis_rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", "tensor"),
        ("layers", None),
    )

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=20, end_lr_ratio=0.1, weight_decay=0.0,
        b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0))

    # steps: optimizer steps for SFT and reward modelling, PPO iterations for PPO.
    c.train = ml_collections.ConfigDict(dict(
        steps=200, batch_size=32, grad_accum=1, log_every=10, eval_every=50,
        checkpoint_every=50, keep_checkpoints=3, num_samples=3, sample_tokens=24,
        tensorboard=True,
        # Stop this invocation after this many steps (0: run to train.steps) and checkpoint;
        # re-running resumes. For time-sliced jobs and resume tests.
        run_steps=0))

    c.data = ml_collections.ConfigDict(dict(
        # A built-in task name ("sentiment"), or a local file / `datasets` name with
        # {prompt, completion} or {messages} rows.
        task="sentiment", source="", eval_source="", split="train", eval_split="test",
        # "" = the task's own tokenizer, or train a byte-level BPE on the data; else a
        # local tokenizer directory.
        tokenizer="", bpe_vocab_size=1024, max_len=32, num_train=4096, num_eval=256))

    # Reward modelling (Bradley-Terry). source "": pairs on the built-in task labelled by
    # its gold reward; else a local file / `datasets` name of TRL {prompt, chosen, rejected}
    # or Anthropic HH {chosen, rejected} rows.
    c.reward = ml_collections.ConfigDict(dict(
        source="", split="train", eval_source="", eval_split="test",
        num_train_pairs=2048, num_eval_pairs=512, num_reference=512,
        max_prompt_tokens=8, max_response_tokens=24,
        label_mode="bradley_terry", label_temperature=0.1, sample_temperature=1.0,
        use_margin=False, center_coef=0.0))

    # PPO; the defaults are those of docs/design.md's PPO details (item numbers in brackets).
    c.ppo = ml_collections.ConfigDict(dict(
        reward_source="model",       # "model": the reward model; "gold": the task's gold reward
        reward_init="",              # deprecated: use the top-level reward_init
        value_init="reward",         # value trunk from the "reward" model, the "policy", or
                                     # "shared" with the policy (one trunk, two heads) [15]
        num_prompts=4096, num_eval_prompts=128, prompt_length=8, response_length=24,  # [4]
        batch_size=64, num_minibatches=4, ppo_epochs=4, grad_accum=1,                  # [13]
        temperature=0.7, top_k=0, top_p=1.0,                                            # [3]
        kl_coef=0.05, kl_estimator="k1", kl_in_reward=True,                             # [7]
        adaptive_kl=False, kl_target=6.0, kl_horizon=10000,                             # [8]
        penalize_missing_eos=True, missing_eos_penalty=-1.0,                             # [5]
        truncate_token_id=-1, truncate_min_length=0,                                     # [4]
        whiten_rewards=False, gamma=1.0, lam=0.95,                                       # [9, 10]
        clip=0.2, value_clip=0.2, vf_coef=0.1, ent_coef=0.0, ptx_coef=0.0,               # [12]
        learning_rate=1e-5, adam_eps=1e-5, tf_adam=False,                               # [16, 17]
        single_program=True))
    # Whiten advantages per minibatch over real tokens [11] where the estimator calls for it
    # (GAE, REINFORCE; GRPO and RLOO normalise their own); False uses them as they are.
    c.ppo.whiten_advantages = True

    # Advantage estimator (jaxrlhf.rl.advantages): "gae" (PPO, with a value model), or the
    # critic-free "grpo", "rloo", "reinforce" (no value model is built). num_generations
    # responses per prompt, so batch_size / num_generations prompts per iteration;
    # scale_rewards: GRPO divides by the group's std (False: Dr. GRPO).
    c.ppo.advantage = "gae"
    c.ppo.num_generations = 1
    c.ppo.scale_rewards = True

    # Direct preference optimisation on the preference pairs of config.reward.* (the same
    # data as the reward model), from the SFT policy in policy_init. loss: "dpo"
    # (Rafailov et al. 2023), "cdpo" (label-smoothed, label_smoothing = assumed flip rate),
    # "ipo" (Azar et al. 2023; beta is its tau), "simpo" (Meng et al. 2024, reference-free,
    # target margin simpo_gamma). Held-out samples are drawn as PPO draws them (ppo.*).
    c.dpo = ml_collections.ConfigDict(dict(
        loss="dpo", beta=0.1, label_smoothing=0.0, simpo_gamma=0.5))

    # Best-of-n: n samples (at ppo.temperature) for each of num_prompts prompts of the task
    # ("eval": the held-out prompts every stage evaluates on; "train": PPO's training
    # prompts), scored by the reward model in reward_init; batch_size responses at once.
    c.bon = ml_collections.ConfigDict(dict(n=16, num_prompts=128, split="eval", batch_size=512))

    # LoRA (Hu et al. 2021): rank 0 = off (every parameter trains). Otherwise only adapters
    # on the linear layers whose names fully match the regular expression `targets` (q, k,
    # v, o, gate, up, down, lm_head) train, scaled by alpha / rank, over a frozen base kept
    # in base_dtype; a scalar model's head trains too.
    c.lora = ml_collections.ConfigDict(dict(
        rank=0, alpha=16.0, targets="q|k|v|o|gate|up|down", base_dtype="float32"))
    # "bfloat16": the frozen reference and reward models in bf16 (half their memory).
    c.ppo.frozen_dtype = ""
    return c


PIPELINE_STAGES = ("sft", "reward", "ppo")
# Every stage command: the pipeline's, direct preference optimisation and best-of-n.
STAGES = (*PIPELINE_STAGES, "dpo", "bon")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, so one experiment file can reuse another's.
    ``FILE.py:ARG`` calls ``get_config(ARG)``, as ``--config=FILE.py:ARG`` does on the
    command line (ml_collections' convention; e.g. ``configs/experiments/stages.py:smoke``)."""
    import importlib.util
    stem, colon, arg = path.partition(".py:")
    path = stem + ".py" if colon else path
    if not os.path.isfile(path):
        raise MissingInputError(f"--config={path}: no such config file")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config={path}: not a Python config file (FILE.py defining "
                          "get_config())")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"--config={path} defines no get_config()")
        return module.get_config(arg) if arg else module.get_config()
    except JaxRLHFError:
        raise
    except Exception as e:  # the config file's own code failed: say so in one line
        raise ConfigError(f"--config={path}{colon}{arg}: the config file failed: "
                          f"{type(e).__name__}: {e}") from e


def check_stage(stage: str, config: ml_collections.ConfigDict) -> None:
    """``stage`` is a stage command (or ``pipeline``) and ``config`` is of its kind: a
    pipeline config for ``pipeline``, a single-stage config otherwise."""
    if stage not in (*STAGES, "pipeline"):
        raise ConfigError(f"stage {stage!r} is not one of {(*STAGES, 'pipeline')}")
    if (stage == "pipeline") != is_pipeline(config):
        kind = "pipeline" if stage == "pipeline" else "single-stage"
        raise ConfigError(f"the {stage!r} command needs a {kind} config (configs/pipeline/ "
                          "holds pipeline configs, configs/<stage>/ single-stage ones)")


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field of ``config`` as a dotted name (``ppo.kl_coef``)."""
    names = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            names += field_names(value, name + ".")
        else:
            names.append(name)
    return names


def unknown_field_message(config: ml_collections.ConfigDict, name: str) -> str:
    """``unknown config field 'x'; did you mean 'ppo.x'?`` with the closest known names."""
    known = field_names(config)
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config field {name!r}{hint}"


def override(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    """Set the dotted field ``name`` of ``config`` to ``value``, as ``--config.NAME=VALUE``
    does: the field must exist and the value must fit its type."""
    *parents, leaf = name.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(unknown_field_message(config, name))
        node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(unknown_field_message(config, name))
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"config.{name}={value!r}: {e}") from None


def is_pipeline(config: ml_collections.ConfigDict) -> bool:
    """A pipeline config holds one stage config per pipeline stage (and, for another
    sequence than SFT -> reward -> PPO, their order in ``stages``)."""
    return "stages" in config or all(name in config for name in PIPELINE_STAGES)


def pipeline_stages(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """``(name, command)`` of each stage of a pipeline config, in order: its ``stages``
    field — a sequence of ``(name, command)`` pairs, each name a stage config of the
    pipeline — or SFT -> reward -> PPO."""
    if "stages" not in config:
        return [(name, name) for name in PIPELINE_STAGES]
    order = [tuple(stage) for stage in config.stages]
    for entry in order:
        if len(entry) != 2 or entry[1] not in STAGES or entry[0] not in config:
            raise ConfigError(f"config.stages entry {entry!r} must be (name, command) with a "
                             f"stage config config.<name> and a command in {STAGES}")
    return order


# Fields naming a local directory that must exist when set.
PATH_FIELDS = {"model_init": "a local Hugging Face model directory (config.json + safetensors)",
               "policy_init": "the workdir of a finished SFT run",
               "reward_init": "the workdir of a finished reward-model run",
               "data.tokenizer": "a local tokenizer directory"}


def check_paths(settings: RunSettings) -> None:
    """Every directory the config names exists (raises ConfigError naming the field)."""
    values = {"model_init": settings.model_init, "policy_init": settings.policy_init,
              "reward_init": settings.reward_init, "data.tokenizer": settings.data.tokenizer}
    for field, value in values.items():
        if value and not os.path.isdir(os.path.expanduser(value)):
            raise ConfigError(f"config.{field}={value!r} is not a directory; it must be "
                              f"{PATH_FIELDS[field]}")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError naming the first invalid field; runs before any compilation.

    A pipeline config (with ``sft``, ``reward`` and ``ppo`` stage configs, or those its
    ``stages`` names) is validated stage by stage, and the field names carry the stage
    (``config.ppo.ppo.clip``).
    """
    if is_pipeline(config):
        for name, _ in pipeline_stages(config):
            try:
                validate(config[name], num_devices)
            except ConfigError as e:
                raise ConfigError(str(e).replace("config.", f"config.{name}.", 1)) from None
        return
    settings = RunSettings.from_config(config)
    settings.check_mesh(num_devices)
    check_paths(settings)


# Activation checkpointing per preset: save the weight matmuls' outputs where they fit,
# recompute whole blocks for the largest model.
PRESET_REMAT = {"gpt2_124m": "dots_with_no_batch_dims_saveable",
                "qwen2_5_0_5b": "dots_with_no_batch_dims_saveable",
                "llama3_2_1b": "dots_with_no_batch_dims_saveable", "llama3_8b": "full"}


def preset_config(name: str) -> ml_collections.ConfigDict:
    """``base_config`` with the model preset ``name`` (``jaxrlhf.models.presets``; random
    init unless ``model_init=DIR``) at an accelerator-sized experiment shape: bf16 compute
    with fp32 parameters and optimizer state, scanned layers with remat, log-probs in chunks
    of 64 positions, FSDP over every device; SFT on 32 x 1024 tokens, reward pairs of 1024
    tokens, PPO on 256 prompts of 256 tokens with 256-token responses and bf16 frozen models.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; the presets are {sorted(PRESETS)}")
    c = base_config()
    c.model.update(PRESETS[name])
    c.model.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                   remat=PRESET_REMAT[name], logits_chunk=64)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(batch_size=32, grad_accum=4)
    c.data.max_len = 1024
    c.reward.update(max_prompt_tokens=512, max_response_tokens=511)
    c.ppo.update(batch_size=256, num_minibatches=4, grad_accum=4, prompt_length=256,
                 response_length=256, frozen_dtype="bfloat16")
    return c
