"""Reward modelling: pairs/s, tokens/s, model FLOP/s, MFU and peak memory of one step.

    python -m benchmarks.reward [--model gpt2_4x256] [--batch 16] [--seq 128] [--grad_accum 1]
        [--dtype bfloat16] [--remat full] [--scan_layers] [--json F]

The stage's own compiled step (``jaxrlhf.trainers.reward.build``: Bradley–Terry loss on the
chosen and rejected rows in one forward pass, AdamW) on random weights and token pairs of
``--seq`` tokens each.
"""
from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxrlhf import parallel
from jaxrlhf.trainers import reward


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = common.model_config(args.model, args.seq, args)
    settings = common.run_settings(cfg, args, "reward", train=dict(batch_size=args.batch,
                                                         grad_accum=args.grad_accum))
    mesh = parallel.make_mesh(settings.mesh)
    program = reward.build(settings, cfg, mesh,
                           reward.initial_params_fn(settings.seed, cfg, None)).supervised
    rng = np.random.default_rng(0)
    shape = (args.batch, args.seq)
    chosen, rejected = (common.random_tokens(rng, shape, cfg.vocab_size) for _ in range(2))
    batch = parallel.shard_batch({
        "chosen_ids": chosen, "chosen_mask": np.ones_like(chosen), "rejected_ids": rejected,
        "rejected_mask": np.ones_like(rejected),
        "margin": np.zeros(args.batch, np.float32)}, mesh)
    holder = {"state": program.init_state()}
    step, memory, hlo = common.compile_with_memory(program.step, holder["state"], batch)

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    seconds = common.time_calls(one_step, warmup=args.warmup, repeats=args.repeats)
    profile = common.traced(args, one_step, hlo)
    tokens = 2 * args.batch * args.seq
    flops = tokens * common.flops_per_token(cfg, args.seq, train=True, head="scalar")
    peak = common.peaks(args)
    return {"benchmark": "reward", "model": args.model,
            "parameters": sum(x.size for x in jax.tree.leaves(holder["state"].params)),
            "tokens_per_step": tokens, "model_flops_per_step": flops,
            "seconds_per_step": seconds,
            "pairs_per_sec_min": args.batch / seconds["min"],
            **common.throughput(tokens, flops, seconds, peak), **peak,
            "compiled_memory": memory,
            "device_peak_bytes": common.device_peak_bytes(), **profile}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--grad_accum", type=int, default=1)
    args = parser.parse_args(argv)
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
