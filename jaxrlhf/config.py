"""The base config every experiment starts from, and its start-up validation.

Configs are ml_collections ``ConfigDict``s, locked so that a misspelt override is an error
naming the field. ``validate`` checks values before anything is compiled (DESIGN.md rule 6).
"""
from __future__ import annotations

import os

import ml_collections

from jaxrlhf import parallel

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
    # A local HF directory (config.json + *.safetensors) to start from; "" = random init.
    c.model_init = ""
    # Workdir of a finished SFT run: the reward and PPO stages start from its policy.
    c.policy_init = ""

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

    # PPO; the defaults are those of PPO_DETAILS.md (item numbers in brackets).
    c.ppo = ml_collections.ConfigDict(dict(
        reward_source="model",       # "model": the reward model; "gold": the task's gold reward
        reward_init="",              # workdir of a finished reward-model run
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
    return c


PIPELINE_STAGES = ("sft", "reward", "ppo")
FAMILIES = ("gpt2", "llama", "qwen2")
DTYPES = ("float32", "bfloat16", "float16")


def _fail(field: str, value, why: str):
    raise ValueError(f"config.{field}={value!r} {why}")


def _positive(config: ml_collections.ConfigDict, field: str, *, allow_zero: bool = False):
    value = config
    for part in field.split("."):
        value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
        _fail(field, value, "must be positive" if not allow_zero else "must be >= 0")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, so one experiment file can reuse another's."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ValueError naming the first invalid field; runs before any compilation.

    A pipeline config (with ``sft``, ``reward`` and ``ppo`` stage configs) is validated
    stage by stage, and the field names carry the stage (``config.ppo.ppo.clip``).
    """
    if all(name in config for name in PIPELINE_STAGES):
        for name in PIPELINE_STAGES:
            try:
                validate(config[name], num_devices)
            except ValueError as e:
                raise ValueError(str(e).replace("config.", f"config.{name}.", 1)) from None
        return
    m = config.model
    if m.family not in FAMILIES:
        _fail("model.family", m.family, f"is not a known model family; choose from {FAMILIES}")
    for field in ("dtype", "param_dtype"):
        if m[field] not in DTYPES:
            _fail(f"model.{field}", m[field], f"must be one of {DTYPES}")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        _positive(config, f"model.{field}")
    if m.d_model % m.n_heads:
        _fail("model.n_heads", m.n_heads, f"must divide model.d_model={m.d_model}")
    if m.n_heads % m.n_kv_heads:
        _fail("model.n_kv_heads", m.n_kv_heads, f"must divide model.n_heads={m.n_heads}")
    _positive(config, "optim.learning_rate")
    _positive(config, "optim.warmup_steps", allow_zero=True)
    _positive(config, "optim.grad_clip", allow_zero=True)
    _positive(config, "train.run_steps", allow_zero=True)
    if not 0.0 <= config.optim.end_lr_ratio <= 1.0:
        _fail("optim.end_lr_ratio", config.optim.end_lr_ratio, "must lie in [0, 1]")
    for field in ("steps", "batch_size", "grad_accum", "log_every", "eval_every",
                  "checkpoint_every", "keep_checkpoints"):
        _positive(config, f"train.{field}")
    try:
        dp = parallel.data_parallel_size(config.mesh, num_devices)
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from None
    t = config.train
    if t.batch_size % t.grad_accum:
        _fail("train.batch_size", t.batch_size,
              f"must be divisible by train.grad_accum={t.grad_accum}")
    micro = t.batch_size // t.grad_accum
    if micro % dp:
        _fail("train.batch_size", t.batch_size,
              f"gives micro-batches of {micro}, not divisible by the data-parallel size {dp} "
              f"(mesh.data x mesh.fsdp on {num_devices} devices)")
    if config.data.max_len > m.max_seq_len:
        _fail("data.max_len", config.data.max_len,
              f"exceeds model.max_seq_len={m.max_seq_len}")
    r = config.reward
    if r.label_mode not in ("bradley_terry", "max"):
        _fail("reward.label_mode", r.label_mode, "must be 'bradley_terry' or 'max'")
    for field in ("num_train_pairs", "num_eval_pairs", "num_reference", "max_prompt_tokens",
                  "max_response_tokens", "label_temperature", "sample_temperature"):
        _positive(config, f"reward.{field}")
    _positive(config, "reward.center_coef", allow_zero=True)
    pair_len = r.max_prompt_tokens + r.max_response_tokens + 1
    if pair_len > m.max_seq_len:
        _fail("reward.max_response_tokens", r.max_response_tokens,
              f"with reward.max_prompt_tokens={r.max_prompt_tokens} and the EOS makes "
              f"{pair_len} tokens, more than model.max_seq_len={m.max_seq_len}")
    p = config.ppo
    choices = {"reward_source": ("model", "gold"), "value_init": ("reward", "policy", "shared"),
               "kl_estimator": ("k1", "k2", "k3")}
    for field, allowed in choices.items():
        if p[field] not in allowed:
            _fail(f"ppo.{field}", p[field], f"must be one of {allowed}")
    for field in ("num_prompts", "num_eval_prompts", "prompt_length", "response_length",
                  "batch_size", "num_minibatches", "ppo_epochs", "grad_accum", "temperature",
                  "learning_rate", "adam_eps", "kl_target", "kl_horizon"):
        _positive(config, f"ppo.{field}")
    for field in ("kl_coef", "clip", "value_clip", "vf_coef", "ent_coef", "ptx_coef"):
        _positive(config, f"ppo.{field}", allow_zero=True)
    if p.reward_source == "gold" and p.value_init == "reward":
        _fail("ppo.value_init", p.value_init,
              "needs a reward model, but ppo.reward_source='gold' trains without one; "
              "set --config.ppo.value_init=policy")
    if p.batch_size % p.num_minibatches:
        _fail("ppo.batch_size", p.batch_size,
              f"must be divisible by ppo.num_minibatches={p.num_minibatches}")
    minibatch = p.batch_size // p.num_minibatches
    if minibatch % p.grad_accum or (minibatch // p.grad_accum) % dp:
        _fail("ppo.grad_accum", p.grad_accum,
              f"must split minibatches of {minibatch} into micro-batches divisible by the "
              f"data-parallel size {dp}")
    if p.batch_size % dp:
        _fail("ppo.batch_size", p.batch_size, f"must be divisible by the data-parallel size {dp}")
    if not 0.0 < p.top_p <= 1.0:
        _fail("ppo.top_p", p.top_p, "must lie in (0, 1]")
    if p.prompt_length + p.response_length > m.max_seq_len:
        _fail("ppo.response_length", p.response_length,
              f"plus ppo.prompt_length={p.prompt_length} exceeds model.max_seq_len={m.max_seq_len}")
    parallel.rules_table(config.axis_rules)
