"""DPO: pairs/s, tokens/s, model FLOP/s, MFU and peak memory of one step, with the
reference policy's log-probs timed apart.

    python -m benchmarks.dpo [--model gpt2_4x256 | llama_4x256] [--batch 16] [--prompt 16]
        [--response 112] [--beta 0.1] [--dtype bfloat16] [--json F]

The stage's own compiled step (``jaxrlhf.trainers.dpo_program.build``: the chosen and
rejected rows of ``--batch`` pairs in one forward pass, the DPO loss of Rafailov et al.
2023, eq. 7, AdamW) on random weights and tokens. jaxrlhf computes the reference
log-probs once before training (they travel with the pairs); TRL and Tunix recompute them
every step, so the reference forward of one batch is timed too, and ``pairs_per_sec_min``
counts both (``step_pairs_per_sec_min``: the step alone).
"""
from __future__ import annotations

import argparse
import functools
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxrlhf import parallel
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.trainers import dpo_program


def random_pairs(args: argparse.Namespace, vocab: int) -> dict[str, np.ndarray]:
    """``--batch`` pairs of one shared ``--prompt``-token prompt and two ``--response``-token
    responses each, every response token in the loss."""
    rng = np.random.default_rng(0)
    seq = args.prompt + args.response
    prompt = common.random_tokens(rng, (args.batch, args.prompt), vocab)
    rows = {}
    for row in dpo_program.PAIRS.rows:
        ids = np.concatenate([prompt, common.random_tokens(rng, (args.batch, args.response),
                                                           vocab)], axis=1)
        rows[f"{row}_ids"], rows[f"{row}_mask"] = ids, np.ones((args.batch, seq), np.int32)
    return {**rows, "prompt_length": np.full(args.batch, args.prompt, np.int32),
            **{k: np.zeros(args.batch, np.float32) for k in dpo_program.PAIRS.scalars}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    seq = args.prompt + args.response
    cfg = common.model_config(args.model, seq, args)
    settings = common.run_settings(cfg, args, "dpo", train=dict(batch_size=args.batch),
                                   dpo=dict(beta=args.beta))
    mesh = parallel.make_mesh(settings.mesh)
    policy = common.random_trained(CausalLM, cfg, 0)
    program = dpo_program.build(settings, policy, mesh)
    pairs = random_pairs(args, cfg.vocab_size)
    reference = parallel.place(policy.params, mesh, settings.rules)
    score = jax.jit(functools.partial(dpo_program.pair_log_probs, policy.graphdef))
    sharded = parallel.shard_batch(pairs, mesh)
    times = {"reference": common.time_calls(lambda: score(reference, sharded)[:2],
                                            warmup=args.warmup, repeats=args.repeats)}
    batch = parallel.shard_batch(dpo_program.with_reference(
        pairs, dpo_program.PAIRS, policy.graphdef, reference, args.batch, mesh, True), mesh)
    holder = {"state": program.init_state()}
    step, memory, hlo = common.compile_with_memory(program.step, holder["state"], batch)

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    times["step"] = common.time_calls(one_step, warmup=args.warmup, repeats=args.repeats)
    profile = common.traced(args, one_step, hlo)
    times["step_and_reference"] = {s: times["step"][s] + times["reference"][s]
                                   for s in ("min", "median")}
    tokens = 2 * args.batch * seq
    flops = {"step": tokens * common.flops_per_token(cfg, seq, train=True),
             "reference": tokens * common.flops_per_token(cfg, seq, train=False)}
    flops["step_and_reference"] = flops["step"] + flops["reference"]
    peak = common.peaks(args)
    return {"benchmark": "dpo", "model": args.model,
            "parameters": sum(x.size for x in jax.tree.leaves(holder["state"].params)),
            "tokens_per_step": tokens, "model_flops": flops, "seconds": times,
            "pairs_per_sec_min": args.batch / times["step_and_reference"]["min"],
            "step_pairs_per_sec_min": args.batch / times["step"]["min"],
            **common.throughput(tokens, flops["step_and_reference"],
                                times["step_and_reference"], peak),
            **peak, "compiled_memory": memory,
            "device_peak_bytes": common.device_peak_bytes(), **profile}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=112)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args(argv)
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
