"""PPO: seconds per iteration and its split (sampling, scoring, update), tokens/s, model
FLOP/s, MFU and the iteration's peak memory.

    python -m benchmarks.ppo [--model gpt2_4x256] [--batch 64] [--prompt 16] [--response 48]
        [--minibatches 4] [--epochs 4] [--grad_accum 1] [--dtype bfloat16]
        [--frozen_dtype bfloat16] [--old_logprobs sampler] [--json F]

One iteration is PPO's compiled program (``jaxrlhf.trainers.ppo.build``): sampling with the
KV cache, scoring (policy, reference, value and reward forwards), GAE and ``epochs x
minibatches`` updates; its phases are also compiled and timed apart on the same inputs.
Randomly initialised GPT-2 or Llama policy, value and reward models of one shape.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxrlhf import parallel, sampling
from jaxrlhf.data.tokenizer import left_pad
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.rl import ppo as ppo_lib
from jaxrlhf.sections.ppo import OLD_LOGPROBS
from jaxrlhf.trainers import ppo
from jaxrlhf.workdir import RewardModel


def _prompts(args: argparse.Namespace, vocab: int, count: int) -> dict[str, np.ndarray]:
    """``count`` left-padded random prompts of ``--prompt / 2`` to ``--prompt`` tokens."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.prompt // 2, args.prompt + 1, size=count)
    ids, mask = left_pad([rng.integers(2, vocab, size=n).tolist() for n in lengths], 0,
                         args.prompt)
    return {"prompt_ids": ids, "prompt_mask": mask}


def iteration_flops(cfg: ModelConfig, args: argparse.Namespace,
                    value_model: bool) -> dict[str, float]:
    """Model FLOPs of an iteration's phases: decoding attends over all prompt + response
    cache slots; scoring is two LM forwards (the policy's old log-probs, unless the
    sampler's are taken, and the reference) and a scalar one for the reward, plus one for
    the value model; the update trains the policy (and the value model) ``epochs`` times
    over the batch."""
    seq = args.prompt + args.response
    fpt = functools.partial(common.flops_per_token, cfg, seq)
    scalar_models = 2 if value_model else 1
    lm_forwards = 1 if args.old_logprobs == "sampler" else 2
    sampling_flops = args.batch * seq * fpt(train=False)
    scoring = args.batch * seq * (lm_forwards * fpt(train=False)
                                  + scalar_models * fpt(train=False, head="scalar"))
    update = args.epochs * args.batch * seq * (
        fpt(train=True) + (scalar_models - 1) * fpt(train=True, head="scalar"))
    return {"sampling": sampling_flops, "scoring": scoring, "update": update,
            "iteration": sampling_flops + scoring + update}


def run(args: argparse.Namespace, *, benchmark: str = "ppo",
        ppo_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one iteration of the PPO program with ``ppo_fields`` over PPO's defaults
    (``benchmarks.grpo`` passes GRPO's), and its phases apart."""
    seq = args.prompt + args.response
    cfg = common.model_config(args.model, seq, args)
    settings = common.run_settings(
        cfg, args, "ppo", train=dict(batch_size=args.batch),
        ppo=dict(num_minibatches=args.minibatches, ppo_epochs=args.epochs,
                 grad_accum=args.grad_accum, frozen_dtype=args.frozen_dtype,
                 old_logprobs=args.old_logprobs,
                 **(ppo_fields or {})),
        sampling=dict(prompt_length=args.prompt, response_length=args.response))
    mesh = parallel.make_mesh(settings.mesh)
    policy = common.random_trained(CausalLM, cfg, 0)
    reward = RewardModel(common.random_trained(ScalarModel, cfg, 1, head_init="normal"),
                         gain=1.0, bias=0.0)
    program = ppo.build(settings, mesh, policy, reward, task=None)
    prompts = _prompts(args, cfg.vocab_size, settings.prompts_drawn_per_iteration)
    batch = parallel.shard_batch(prompts, mesh)
    holder = {"state": program.init_state()}
    iterate, memory, hlo = common.compile_with_memory(program.iterate, holder["state"],
                                                 program.frozen, batch)

    def one_iteration():
        holder["state"], metrics = iterate(holder["state"], program.frozen, batch)
        return metrics

    times = {"iteration": common.time_calls(one_iteration, warmup=args.warmup,
                                            repeats=args.repeats)}
    profile = common.traced(args, one_iteration, hlo)
    p, g, state, key = settings.ppo, settings.sampling, holder["state"], jax.random.key(0)
    generate = jax.jit(functools.partial(
        sampling.generate, program.models.policy, max_new_tokens=g.response_length, eos_id=1,
        pad_id=0, temperature=g.temperature))
    rollout = jax.jit(functools.partial(ppo_lib.rollout, models=program.models, settings=p,
                                        sampling=g))
    update = jax.jit(functools.partial(ppo_lib.update, models=program.models, settings=p,
                                       temperature=g.temperature,
                                       optimizers=ppo.make_optimizers(settings)))
    _, data, _ = rollout(state, program.frozen, batch)
    calls = {"sampling": lambda: generate(state.policy, batch["prompt_ids"],
                                          batch["prompt_mask"], key),
             "rollout": lambda: rollout(state, program.frozen, batch),
             "update": lambda: update(state, program.frozen, data, None)}
    for name, call in calls.items():
        times[name] = common.time_calls(call, warmup=args.warmup, repeats=args.repeats)
    times["scoring"] = {s: times["rollout"][s] - times["sampling"][s] for s in ("min", "median")}
    flops = iteration_flops(cfg, args, settings.ppo.uses_value_model)
    peak = common.peaks(args)
    tokens = args.batch * seq
    return {"benchmark": benchmark, "model": args.model,
            "parameters": sum(x.size for x in jax.tree.leaves(state.policy)),
            "seconds": times, "model_flops": flops,
            "sampling_tokens_per_sec_min": args.batch * args.response / times["sampling"]["min"],
            **common.throughput(tokens, flops["iteration"], times["iteration"], peak),
            **{f"mfu_{name}_min": flops[name] / times[name]["min"] / 1e12 / peak["peak_tflops"]
               for name in ("sampling", "scoring", "update")},
            **peak, "compiled_memory": memory, "device_peak_bytes": common.device_peak_bytes(),
            **profile}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0], batch=64)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=48)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--frozen_dtype", default="", choices=("", "bfloat16", "float32"))
    add_old_logprobs(parser)
    args = parser.parse_args(argv)
    return common.finish(run(args), args)


def add_old_logprobs(parser: argparse.ArgumentParser) -> None:
    """``--old_logprobs``: ``ppo.old_logprobs`` (``sampler`` saves the policy forward)."""
    parser.add_argument("--old_logprobs", default="forward", choices=OLD_LOGPROBS,
                        help="ppo.old_logprobs: recompute the old log-probs with a policy "
                             "forward, or take the sampler's")


if __name__ == "__main__":
    main()
