"""Seconds per PPO iteration and its split (sampling, scoring, update), and sampling tokens/s.

    python benchmarks/ppo.py [--shape quickstart|gpt2_4x256|gpt2_large_gpu] [--iters 5]

Models are randomly initialised (speed does not depend on the weights); the policy, value
and reward models share the shape. Timings exclude compilation (one warm-up iteration) and
block on the results. Report them with the machine they were measured on.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
import types

import jax
import numpy as np

from jaxrlhf import parallel, sampling
from jaxrlhf.config import base_config
from jaxrlhf.data.tokenizer import left_pad
from jaxrlhf.models.build import abstract_model, random_params
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.transformer import CausalLM, ScalarModel
from jaxrlhf.rl import ppo as ppo_lib
from jaxrlhf.settings import RunSettings
from jaxrlhf.trainers import ppo
from jaxrlhf.workdir import RewardModel, TrainedModel

SHAPES = {
    # configs/ppo/quickstart.py on the sentiment task
    "quickstart": dict(model=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=68),
                       prompt=8, response=24, batch=64, minibatches=4, epochs=4),
    # TRL's trainer shapes at CPU size: a 4-layer, 256-wide GPT-2
    "gpt2_4x256": dict(model=dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, vocab_size=512),
                       prompt=16, response=48, batch=64, minibatches=4, epochs=4),
    # a GPT-2-small-sized run for accelerators
    "gpt2_large_gpu": dict(model=dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                                      vocab_size=50257),
                           prompt=64, response=128, batch=256, minibatches=4, epochs=4),
}


def _config(shape: dict, dtype: str):
    c = base_config()
    m = shape["model"]
    c.model.update(family="gpt2", n_kv_heads=m["n_heads"], max_seq_len=shape["prompt"] + shape["response"],
                   dtype=dtype, **m)
    c.ppo.update(reward_source="model", prompt_length=shape["prompt"],
                 response_length=shape["response"], batch_size=shape["batch"],
                 num_minibatches=shape["minibatches"], ppo_epochs=shape["epochs"],
                 penalize_missing_eos=True)
    # unused by PPO, but validated with the rest: keep its rows within max_seq_len
    c.reward.update(max_prompt_tokens=shape["prompt"], max_response_tokens=shape["response"] - 1)
    c.train.steps = 1000
    return c


def _trained(cls, cfg: ModelConfig, seed: int, **kwargs) -> TrainedModel:
    graphdef, _ = abstract_model(cls, cfg, **kwargs)
    params = jax.jit(lambda: random_params(cls, cfg, seed, **kwargs))()
    tokenizer = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
    return TrainedModel(tokenizer, cfg, graphdef, params, workdir="")


def _prompts(shape: dict, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, p = shape["batch"], shape["prompt"]
    lengths = rng.integers(p // 2, p + 1, size=b)
    seqs = [rng.integers(2, vocab, size=n).tolist() for n in lengths]
    ids, mask = left_pad(seqs, 0, p)
    return {"prompt_ids": ids, "prompt_mask": mask}


def _timed(fn, *args, iters: int) -> float:
    jax.block_until_ready(fn(*args))                       # compile + warm up
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters


def model_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """Forward FLOPs per token: 2 x params (matmuls) + attention (Kaplan et al. 2020)."""
    d, layers = cfg.d_model, cfg.n_layers
    matmul = layers * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    return 2 * matmul + 2 * layers * seq * d


def run(shape_name: str, iters: int, dtype: str) -> dict:
    shape = SHAPES[shape_name]
    settings = RunSettings.from_config(_config(shape, dtype))
    model_cfg = settings.model
    mesh = parallel.make_mesh(settings.mesh)
    policy = _trained(CausalLM, model_cfg, 0)
    rm = RewardModel(_trained(ScalarModel, model_cfg, 1, head_init="normal"), gain=1.0, bias=0.0)
    program = ppo.build(settings, mesh, policy, rm, task=None)
    batch = parallel.shard_batch(_prompts(shape, model_cfg.vocab_size), mesh)
    state = jax.jit(program.init_state, out_shardings=program.state_shardings)()

    # the whole iteration, one program (state donated: thread it through)
    holder = {"state": state}

    def one_iteration():
        holder["state"], metrics = program.step(holder["state"], batch)
        return metrics

    total = _timed(one_iteration, iters=iters)

    # its phases, compiled separately, on the same inputs
    p = settings.ppo
    generate = jax.jit(functools.partial(
        sampling.generate, program.models.policy, max_new_tokens=p.response_length,
        eos_id=1, pad_id=0, temperature=p.temperature))
    key = jax.random.key(0)
    t_sample = _timed(generate, holder["state"].policy, batch["prompt_ids"],
                      batch["prompt_mask"], key, iters=iters)
    rollout_fn = jax.jit(functools.partial(ppo_lib.rollout, models=program.models, settings=p))
    t_rollout = _timed(lambda: rollout_fn(holder["state"], program.frozen, batch), iters=iters)
    _, rollout = rollout_fn(holder["state"], program.frozen, batch)
    update_fn = jax.jit(functools.partial(ppo_lib.update, models=program.models, settings=p,
                                          optimizers=ppo.make_optimizers(settings)))
    t_update = _timed(lambda: update_fn(holder["state"], rollout, None), iters=iters)

    new_tokens = shape["batch"] * shape["response"]
    seq = shape["prompt"] + shape["response"]
    fwd = model_flops_per_token(model_cfg, seq)
    tokens = shape["batch"] * seq
    # sampling: policy decode; scoring: policy, ref, value, reward forwards;
    # update: epochs x (policy + value) forward + backward (3x forward)
    flops = (new_tokens * fwd + 4 * tokens * fwd + p.ppo_epochs * 2 * 3 * tokens * fwd)
    result = {
        "shape": shape_name, "device": jax.devices()[0].device_kind,
        "platform": platform.processor() or platform.machine(), "devices": jax.device_count(),
        "dtype": dtype, "seconds_per_iteration": total, "sampling_seconds": t_sample,
        "scoring_seconds": t_rollout - t_sample, "update_seconds": t_update,
        "sampling_tokens_per_sec": new_tokens / t_sample,
        "iteration_tokens_per_sec": tokens / total, "model_tflops_per_sec": flops / total / 1e12,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's peak, to print MFU (e.g. 989 for H100 bf16)")
    args = parser.parse_args()
    for name in args.shape or ["quickstart", "gpt2_4x256"]:
        result = run(name, args.iters, args.dtype)
        if args.peak_tflops:
            result["mfu"] = result["model_tflops_per_sec"] / args.peak_tflops
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
