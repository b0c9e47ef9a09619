"""The shared benchmark driver: environment, timing, FLOP and byte counts, peaks, JSON.

Every benchmark times a compiled program after ``--warmup`` untimed calls (compilation
included there), blocks on its results, repeats ``--repeats`` times and reports min and
median seconds; derives tokens/s, model FLOP/s and MFU against ``--peak_tflops``, and the
peak device memory (the runtime's when the backend reports it, and XLA's compiled memory
analysis of the step always). The peaks default to :data:`DEVICES` for accelerators
(spec-sheet dense numbers) and, on a CPU, to a large fp32 matmul and an array copy
measured on the machine just before the run: the machine's own limit.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import re
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf import memory, stages
from jaxrlhf.config import base_config
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.presets import PRESETS, preset
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.settings import RunSettings
from jaxrlhf.workdir import TrainedModel

# Dense peak TFLOP/s by compute dtype and HBM GB/s, from the vendors' spec sheets. Keys are
# matched (lower case) against ``jax.devices()[0].device_kind``; the first match wins.
# "float32" on GPUs is TF32 tensor-core math, what XLA uses for fp32 matmuls by default.
DEVICES: dict[str, dict[str, float]] = {
    "h200": {"bfloat16": 989.4, "float32": 494.7, "hbm_gbps": 4800.0},
    "h100 pcie": {"bfloat16": 756.0, "float32": 378.0, "hbm_gbps": 2000.0},
    "h100": {"bfloat16": 989.4, "float32": 494.7, "hbm_gbps": 3350.0},
    "a100-sxm4-40gb": {"bfloat16": 312.0, "float32": 156.0, "hbm_gbps": 1555.0},
    "a100": {"bfloat16": 312.0, "float32": 156.0, "hbm_gbps": 2039.0},
    "l40s": {"bfloat16": 362.0, "float32": 183.0, "hbm_gbps": 864.0},
    "l4": {"bfloat16": 121.0, "float32": 60.0, "hbm_gbps": 300.0},
    "tpu v6 lite": {"bfloat16": 918.0, "float32": 918.0, "hbm_gbps": 1640.0},
    "tpu v5 lite": {"bfloat16": 197.0, "float32": 197.0, "hbm_gbps": 819.0},
    "tpu v5": {"bfloat16": 459.0, "float32": 459.0, "hbm_gbps": 2765.0},
    "tpu v4": {"bfloat16": 275.0, "float32": 275.0, "hbm_gbps": 1200.0},
}

def model_config(name: str, seq: int, args: argparse.Namespace) -> ModelConfig:
    """A model by name — a preset (``jaxrlhf.models.presets``) or ``FAMILY_LxD[_kvK][_tied]``,
    a CPU-scale GPT-2 or Llama with L layers of width D (heads of 64, or 2 at least; 512-token
    vocabulary; Llama: K key-value heads, a quarter of the heads by default, SwiGLU of about
    8D/3, untied embeddings unless ``_tied``; ``llama_4x256_kv4_tied`` is the shape of the
    peer comparison in ``benchmarks/README.md``) — long enough for ``seq`` tokens, with the
    run's dtype and memory options."""
    options = dict(dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat,
                   scan_layers=args.scan_layers, logits_chunk=args.logits_chunk)
    if name in PRESETS:
        cfg = preset(name, **options)
        return cfg if cfg.max_seq_len >= seq else cfg.replace(max_seq_len=seq)
    match = re.fullmatch(r"(gpt2|llama)_(\d+)x(\d+)(?:_kv(\d+))?(_tied)?", name)
    if not match or (match[1] == "gpt2" and (match[4] or match[5])):
        raise SystemExit(f"--model {name!r}: a preset ({', '.join(sorted(PRESETS))}) or "
                         "FAMILY_LxD with FAMILY gpt2 or llama, e.g. gpt2_4x256, and for "
                         "llama optionally _kvK (key-value heads) and _tied, e.g. "
                         "llama_4x256_kv4_tied")
    family, layers, width = match[1], int(match[2]), int(match[3])
    heads = max(2, width // 64)
    shape = dict(family=family, vocab_size=512, d_model=width, n_layers=layers, n_heads=heads)
    if family == "gpt2":
        shape.update(n_kv_heads=heads, d_ff=4 * width, tie_embeddings=True, qkv_bias=True)
    else:
        shape.update(n_kv_heads=int(match[4] or max(1, heads // 4)),
                     d_ff=64 * round(8 * width / 3 / 64), tie_embeddings=bool(match[5]),
                     qkv_bias=False, norm_eps=1e-6)
    return ModelConfig(**shape, max_seq_len=seq, **options).validate()


def run_settings(cfg: ModelConfig, args: argparse.Namespace, stage: str,
                 **fields: dict[str, Any]) -> RunSettings:
    """Typed settings for a benchmark of ``stage`` on ``cfg``: the base config with this
    model, the ``--mesh``, other stages' lengths fitted to the model, and the given fields
    of each section (``train=dict(batch_size=16)``, ``ppo=...``), checked as the stage
    checks them."""
    c = base_config()
    c.model.update(dataclasses.asdict(cfg))
    c.mesh.update(mesh_axes(args.mesh))
    n = cfg.max_seq_len
    c.data.max_len = n
    c.reward.update(max_prompt_tokens=n // 2, max_response_tokens=n - n // 2 - 1)
    c.sampling.update(prompt_length=n // 2, response_length=n - n // 2)
    c.train.steps = 1000
    for section, values in fields.items():
        c[section].update(values)
    settings = RunSettings.from_config(c)
    stages.get(stage).check(settings, jax.device_count())
    return settings


def parser(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The options every benchmark takes; ``defaults`` sets per-benchmark defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="gpt2_4x256",
                   help=f"FAMILY_LxD (gpt2_4x256, llama_4x256, ...) or a preset: "
                        f"{', '.join(sorted(PRESETS))}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128, help="tokens per row")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype")
    p.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none", choices=("none", "full", "dots_saveable"))
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument("--logits_chunk", type=int, default=0)
    p.add_argument("--mesh", default="data=-1", help="mesh sizes, e.g. data=1,fsdp=-1")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls (compilation)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="device peak for MFU (default: the DEVICES table, or measured on CPU)")
    p.add_argument("--peak_gbps", type=float, default=0.0,
                   help="memory bandwidth for the roofline (default: as --peak_tflops)")
    p.add_argument("--peak_source", default="command line",
                   help="where the --peak_* numbers come from (recorded with the result)")
    p.add_argument("--json", default="", help="also write the result here")
    p.add_argument("--trace", default="", help="also trace --repeats calls of the main "
                   "program into this directory and report where its time goes, op by op "
                   "(benchmarks.op_profile); the timings are taken apart, untraced")
    p.set_defaults(**defaults)
    return p


def mesh_axes(spec: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in spec.split(",") if item)}


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int) -> dict[str, Any]:
    """Seconds per call of ``fn`` (which returns arrays to block on): ``warmup`` untimed
    calls, then ``repeats`` timed ones, each blocked until its results are ready."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return {"min": min(times), "median": statistics.median(times), "all": times}


def matmul_parameters(cfg: ModelConfig, head: str = "lm") -> int:
    """Parameters that take part in a matmul per token: every weight but the embedding
    (and GPT-2's position) tables, plus the output head (the tied embedding's [vocab, d]
    counts there; a scalar head is [d, 1])."""
    graphdef, state = abstract_model(CausalLM, cfg)
    total = sum(x.size for x in jax.tree.leaves(state))
    tables = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    if cfg.family == "gpt2":
        tables += cfg.max_seq_len * cfg.d_model
    out = cfg.vocab_size * cfg.d_model if head == "lm" else cfg.d_model
    return total - tables + out


def flops_per_token(cfg: ModelConfig, context: int, *, train: bool, head: str = "lm") -> float:
    """Model FLOPs per token (PaLM, Chowdhery et al. 2022, app. B): 2 per matmul parameter
    forward plus 4 L H Dh per attended position (scores and values), times 3 when training
    (forward + backward). ``context``: the positions each token attends over."""
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context
    forward = 2 * matmul_parameters(cfg, head) + attention
    return 3 * forward if train else forward


@functools.cache
def measure_cpu_peaks(repeats: int = 5) -> dict[str, float]:
    """This machine's own limits, through XLA, best of ``repeats``: a 2048^3 fp32 matmul's
    FLOP/s and the read bandwidth of a sum over 512 MiB (decoding mostly reads), measured
    once per process."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (128 * 2 ** 20,), jnp.float32)
    matmul, total = jax.jit(lambda a: a @ a), jax.jit(jnp.sum)    # arguments, not constants
    mm = time_calls(lambda: matmul(a), warmup=1, repeats=repeats)["min"]
    read = time_calls(lambda: total(x), warmup=1, repeats=repeats)["min"]
    return {"tflops": 2 * 2048 ** 3 / mm / 1e12, "gbps": x.nbytes / read / 1e9}


def device_entry(kind: str) -> dict[str, float] | None:
    """The :data:`DEVICES` row of a ``device_kind`` (None when it is not listed)."""
    kind = kind.lower()
    return next((v for k, v in DEVICES.items() if k in kind), None)


def peaks(args: argparse.Namespace) -> dict[str, Any]:
    """Peak TFLOP/s and GB/s for MFU and the roofline: the flags, else the table, else
    (CPU) measured now."""
    entry = device_entry(jax.devices()[0].device_kind)
    if args.peak_tflops and args.peak_gbps:
        source = args.peak_source
        tflops, gbps = args.peak_tflops, args.peak_gbps
    elif entry is not None:
        source = "DEVICES table (spec sheet, dense)"
        tflops, gbps = entry[args.dtype], entry["hbm_gbps"]
    else:
        source = "measured on this machine (fp32 matmul, 512 MiB read)"
        measured = measure_cpu_peaks()
        tflops, gbps = measured["tflops"], measured["gbps"]
    return {"peak_tflops": args.peak_tflops or tflops, "peak_gbps": args.peak_gbps or gbps,
            "peak_source": source}


def cpu_info() -> dict[str, str]:
    """The host CPU's model name and the widest vector instruction set it reports (x86:
    AVX-512 / AVX2 / SSE4.2 from ``/proc/cpuinfo``'s flags; Arm: SVE / NEON), since XLA's
    and PyTorch's CPU kernels, and so every CPU figure, depend on it."""
    fields: dict[str, str] = {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                           ("sse4_2", "SSE4.2"), ("sve", "SVE"),
                                           ("asimd", "NEON")) if flag in flags), "unknown")
    model = fields.get("model name") or platform.processor() or platform.machine()
    return {"cpu_model": model, "vector_isa": widest}


def environment() -> dict[str, Any]:
    """Where and how the numbers were measured."""
    return {"device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "backend": jax.default_backend(), "jax": jax.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            **cpu_info(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])}


def device_peak_bytes() -> int | None:
    """The runtime's peak bytes in use on device 0 (None where the backend keeps none, as
    the CPU does)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def compile_with_memory(jitted: Any, *args: Any) -> tuple[Any, dict[str, int], str]:
    """``jitted`` compiled for these arguments, XLA's memory analysis of it (per device)
    and its optimised HLO text (for :func:`op_profile`). Timing the compiled object itself
    compiles once."""
    compiled = jitted.lower(*args).compile()
    trailing = getattr(jitted, "trailing", ())      # a parallel.MeshJit's bound arguments
    run = (lambda *given: compiled(*given, *trailing)) if trailing else compiled
    return run, memory.compiled_memory(compiled), compiled.as_text()


def op_profile(fn: Callable[[], Any], hlo: str, trace_dir: str,
               calls: int) -> dict[str, Any]:
    """``calls`` calls of ``fn`` (a compiled program, warmed up) under ``jax.profiler``,
    written to ``trace_dir`` with the program's HLO, and where their time went
    (``benchmarks.op_profile``)."""
    from benchmarks import op_profile as profile_lib
    os.makedirs(trace_dir, exist_ok=True)
    with open(os.path.join(trace_dir, profile_lib.HLO_FILE), "w") as f:
        f.write(hlo)
    with open(os.path.join(trace_dir, "calls.txt"), "w") as f:
        f.write(str(calls))
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(fn())
    summary = profile_lib.summarise(trace_dir, calls)
    print("\n".join(profile_lib.lines(summary)), file=sys.stderr)
    return summary


def traced(args: argparse.Namespace, fn: Callable[[], Any], hlo: str) -> dict[str, Any]:
    """``{"op_profile": ...}`` of ``fn`` under ``--trace`` (:func:`op_profile`), else {}."""
    return {"op_profile": op_profile(fn, hlo, args.trace, args.repeats)} if args.trace else {}


def finish(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Add the environment and options, print the JSON and write it to ``--json``."""
    result = {**result, "options": vars(args), "environment": environment()}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return result


def random_trained(cls: type, cfg: ModelConfig, seed: int, **kwargs: Any) -> TrainedModel:
    """A randomly initialised model of ``cls`` as a stage loads a trained one (pad id 0,
    EOS id 1, as :func:`random_tokens` leaves them)."""
    graphdef, _ = abstract_model(cls, cfg, **kwargs)
    params = jax.jit(lambda: random_params(cls, cfg, seed, **kwargs))()
    tokenizer = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
    return TrainedModel(tokenizer, cfg, graphdef, params, workdir="")


def random_tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab: int) -> np.ndarray:
    """Random token ids in [2, vocab) (0 and 1 are the pad and EOS ids here)."""
    return rng.integers(2, vocab, size=shape).astype(np.int32)


def throughput(tokens: float, flops: float, seconds: dict[str, Any],
               peak: dict[str, Any]) -> dict[str, float]:
    """tokens/s, model TFLOP/s and MFU at the min and median times."""
    out = {}
    for stat in ("min", "median"):
        s = seconds[stat]
        out[f"tokens_per_sec_{stat}"] = tokens / s
        out[f"model_tflops_{stat}"] = flops / s / 1e12
        out[f"mfu_{stat}"] = flops / s / 1e12 / peak["peak_tflops"]
    return out
