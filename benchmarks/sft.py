"""SFT: tokens/s, model FLOP/s, MFU and peak memory of one optimizer step.

    python -m benchmarks.sft [--model gpt2_4x256] [--batch 16] [--seq 128] [--grad_accum 1]
        [--dtype bfloat16] [--remat full] [--scan_layers] [--logits_chunk 64] [--json F]

The stage's own compiled step (``jaxrlhf.trainers.supervised.lm_program``: loss, gradient accumulation,
AdamW) on random weights and tokens, every token in the loss; speed does not depend on the
values.
"""
from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxrlhf import parallel
from jaxrlhf.trainers import supervised


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = common.model_config(args.model, args.seq, args)
    settings = common.run_settings(cfg, args, "sft", train=dict(batch_size=args.batch,
                                                         grad_accum=args.grad_accum))
    mesh = parallel.make_mesh(settings.mesh)
    program = supervised.lm_program(settings, cfg, mesh)
    ids = common.random_tokens(np.random.default_rng(0), (args.batch, args.seq), cfg.vocab_size)
    batch = parallel.shard_batch({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                  "loss_mask": np.ones_like(ids)}, mesh)
    holder = {"state": program.init_state()}
    step, memory, hlo = common.compile_with_memory(program.step, holder["state"], batch)

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    seconds = common.time_calls(one_step, warmup=args.warmup, repeats=args.repeats)
    profile = common.traced(args, one_step, hlo)
    tokens = args.batch * args.seq
    flops = tokens * common.flops_per_token(cfg, args.seq, train=True)
    peak = common.peaks(args)
    return {"benchmark": "sft", "model": args.model,
            "parameters": sum(x.size for x in jax.tree.leaves(holder["state"].params)),
            "tokens_per_step": tokens, "model_flops_per_step": flops,
            "seconds_per_step": seconds, **common.throughput(tokens, flops, seconds, peak),
            **peak, "compiled_memory": memory,
            "device_peak_bytes": common.device_peak_bytes(), **profile}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--grad_accum", type=int, default=1)
    args = parser.parse_args(argv)
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
