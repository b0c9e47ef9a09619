"""Decoding: tokens/s, bytes moved per token and the fraction of the memory roofline.

    python -m benchmarks.decode [--model gpt2_4x256] [--batch 16] [--prompt 64] [--new 64]
        [--dtype bfloat16] [--param_dtype bfloat16] [--peak_gbps B] [--json F]

``jaxrlhf.sampling.generate`` (one batched prefill, then a ``lax.scan`` of one-token steps
writing the KV cache in place) on random weights and prompts. A decode step's time is
``(t(new) - t(1)) / (new - 1)`` from two full calls, so the prefill cancels. Each step reads
every weight once and the whole allocated KV cache (``prompt + new`` slots; the masked
slots are read too), so ``bytes per step = parameter bytes + 2 L B S Hkv Dh x itemsize``;
its rate over the step time, divided by ``--peak_gbps``, is the roofline fraction.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxrlhf import sampling
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.transformer import CausalLM


def run(args: argparse.Namespace) -> dict[str, Any]:
    slots = args.prompt + args.new
    cfg = common.model_config(args.model, slots, args)
    graphdef, _ = abstract_model(CausalLM, cfg)
    params = jax.jit(lambda: random_params(CausalLM, cfg, 0))()
    ids = common.random_tokens(np.random.default_rng(0), (args.batch, args.prompt),
                               cfg.vocab_size)
    prompt = (jax.numpy.asarray(ids), jax.numpy.ones_like(ids))
    key = jax.random.key(0)

    def generate(new: int):
        fn = jax.jit(functools.partial(sampling.generate, graphdef, max_new_tokens=new,
                                       eos_id=1, pad_id=0, temperature=1.0))
        return common.compile_with_memory(fn, params, *prompt, key)

    full, memory, hlo = generate(args.new)
    one, _, _ = generate(1)
    t_full = common.time_calls(lambda: full(params, *prompt, key), warmup=args.warmup,
                               repeats=args.repeats)
    profile = common.traced(args, lambda: full(params, *prompt, key), hlo)
    t_one = common.time_calls(lambda: one(params, *prompt, key), warmup=args.warmup,
                              repeats=args.repeats)
    step = {stat: (t_full[stat] - t_one[stat]) / (args.new - 1) for stat in ("min", "median")}
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    itemsize = jax.numpy.dtype(cfg.dtype).itemsize
    cache_bytes = 2 * cfg.n_layers * args.batch * slots * cfg.n_kv_heads * cfg.head_dim * itemsize
    step_bytes = param_bytes + cache_bytes
    step_flops = args.batch * common.flops_per_token(cfg, slots, train=False)
    peak = common.peaks(args)
    out = {"benchmark": "decode", "model": args.model,
           "parameters": sum(x.size for x in jax.tree.leaves(params)),
           "generate_seconds": t_full, "generate_one_token_seconds": t_one,
           "decode_step_seconds": step, "parameter_bytes": param_bytes,
           "kv_cache_bytes": cache_bytes, "bytes_per_step": step_bytes,
           "bytes_per_token": step_bytes / args.batch, **peak,
           "compiled_memory": memory, "device_peak_bytes": common.device_peak_bytes(),
           **profile}
    for stat in ("min", "median"):
        seconds = step[stat]
        out[f"decode_tokens_per_sec_{stat}"] = args.batch / seconds
        out[f"achieved_gbps_{stat}"] = step_bytes / seconds / 1e9
        out[f"roofline_fraction_{stat}"] = step_bytes / seconds / 1e9 / peak["peak_gbps"]
        out[f"mfu_{stat}"] = step_flops / seconds / 1e12 / peak["peak_tflops"]
    out["prefill_tokens_per_sec_min"] = args.batch * args.prompt / t_one["min"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens (>= 2)")
    args = parser.parse_args(argv)
    if args.new < 2:
        parser.error("--new must be at least 2 (the step time is a difference of two calls)")
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
