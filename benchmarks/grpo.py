"""GRPO: seconds per step and its split (sampling, scoring, update), tokens/s, model FLOP/s,
MFU and the step's peak memory.

    python -m benchmarks.grpo [--model gpt2_4x256 | llama_4x256] [--prompts 16]
        [--generations 4] [--prompt 16] [--response 48] [--dtype bfloat16]
        [--old_logprobs sampler] [--json F]

One step is PPO's compiled program (``jaxrlhf.trainers.ppo.build``) with the settings of
``configs/grpo/quickstart.py``: ``--generations`` responses to each of ``--prompts``
prompts, group-normalised advantages (Shao et al. 2024) and no value model, the KL to the
reference policy as a k3 loss term (beta 0.04), and one policy update on the whole batch
(one minibatch, one epoch), as TRL's and Tunix's GRPO trainers take per batch. Its phases
are timed apart on the same inputs (``benchmarks.ppo``).
"""
from __future__ import annotations

from typing import Any

from benchmarks import common, ppo

GRPO_FIELDS = dict(advantage="grpo", kl_in_reward=False, kl_estimator="k3", kl_coef=0.04)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.splitlines()[0], batch=0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=48)
    parser.add_argument("--frozen_dtype", default="", choices=("", "bfloat16", "float32"))
    ppo.add_old_logprobs(parser)
    args = parser.parse_args(argv)
    if args.batch not in (0, args.prompts * args.generations):
        parser.error(f"--batch={args.batch}: GRPO's batch is --prompts x --generations "
                     f"({args.prompts * args.generations}); set those instead")
    args.batch = args.prompts * args.generations
    args.minibatches, args.epochs, args.grad_accum = 1, 1, 1
    result = ppo.run(args, benchmark="grpo",
                     ppo_fields={**GRPO_FIELDS, "num_generations": args.generations})
    return common.finish(result, args)


if __name__ == "__main__":
    main()
