"""How the IMDb reward model's held-out gold agreement grows with the number of training
pairs: the pipeline's reward stage (``configs/pipeline/imdb_research.py``) re-run at more
pairs, each for one epoch from the same SFT policy, with the same held-out pairs.

    python -m experiments.imdb_research.agreement --workdir=runs/imdb_research \
        [--pairs=24576,49152] [--ppo] [--out=experiments/imdb_research/agreement.json]

Each point is trained once (``jaxrlhf.run_once``) in ``WORKDIR/agreement/<pairs>``, so an
interrupted sweep re-run with the same command continues with the point it stopped in. The
pipeline's own reward model (``WORKDIR/reward``) is the first row. Model size is not an axis
here: every reward model starts from the one pretrained 4 x 256 LM's SFT policy, as the
paper's does from its SFT model. ``--ppo`` also runs the pipeline's PPO stage against the
reward model of the most pairs (``WORKDIR/agreement/ppo_<pairs>``) and adds its summary.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jaxrlhf
from jaxrlhf import workdir as workdir_lib
from jaxrlhf.api import with_overrides
from jaxrlhf.config import load_config_file

from experiments.imdb_research import collect

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE = os.path.join(HERE, "..", "..", "configs", "pipeline", "imdb_research.py")
EVALUATIONS_PER_RUN = 8


def point(workdir: str) -> dict[str, Any]:
    """One reward model's row: its pairs, the chosen (lowest held-out loss) step and its
    held-out loss and gold agreement, and its curve (``collect.reward_curve``)."""
    config = workdir_lib.read_json(workdir, workdir_lib.CONFIG_FILE)
    summary = workdir_lib.read_json(workdir, workdir_lib.SUMMARY_FILE)
    return {"pairs": config["reward"]["num_train_pairs"], "step": summary["step"],
            "loss": summary["eval/rm/loss"], "gold_accuracy": summary["eval/rm/gold_accuracy"],
            "curve": collect.reward_curve(workdir, config["train"]["batch_size"])}


def reward_config(pipeline_config, sft_dir: str, pairs: int):
    """The pipeline's reward stage at ``pairs`` training pairs, one epoch, evaluated
    :data:`EVALUATIONS_PER_RUN` times."""
    base = pipeline_config.reward
    steps = pairs // base.train.batch_size
    every = steps // EVALUATIONS_PER_RUN
    return with_overrides(base, {"policy_init": sft_dir, "reward.num_train_pairs": pairs,
                                 "train.steps": steps, "train.eval_every": every,
                                 "train.checkpoint_every": every})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/imdb_research")
    parser.add_argument("--pairs", default="24576,49152")
    parser.add_argument("--ppo", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "agreement.json"))
    args = parser.parse_args()
    pipeline_config = load_config_file(PIPELINE)
    rows = [point(os.path.join(args.workdir, "reward"))]
    for pairs in (int(p) for p in args.pairs.split(",")):
        config = reward_config(pipeline_config, os.path.join(args.workdir, "sft"), pairs)
        result = jaxrlhf.run_once("reward", config,
                                  os.path.join(args.workdir, "agreement", str(pairs)))
        rows.append(point(result.workdir))
        with open(args.out, "w") as f:          # after every point: a partial sweep is kept
            json.dump({"gate": 0.80, "points": rows}, f, indent=1)
        print({k: rows[-1][k] for k in ("pairs", "step", "loss", "gold_accuracy")})
    if args.ppo:
        ppo = with_overrides(pipeline_config.ppo, {
            "policy_init": os.path.join(args.workdir, "sft"), "reward_init": result.workdir})
        summary = jaxrlhf.run_once("ppo", ppo, os.path.join(
            args.workdir, "agreement", f"ppo_{rows[-1]['pairs']}")).summary
        with open(args.out, "w") as f:
            json.dump({"gate": 0.80, "points": rows,
                       "ppo": {"reward_pairs": rows[-1]["pairs"],
                               **{k: summary[k] for k in collect.SUMMARY_KEYS}}}, f, indent=1)
        print({k: round(summary[k], 3) for k in collect.SUMMARY_KEYS})


if __name__ == "__main__":
    main()
