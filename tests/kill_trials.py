"""Audit: kill each stage with SIGKILL at random moments, resume it, and compare its logs.

    python tests/kill_trials.py [--trials 5] [--seed 0]

Not part of the pytest suite (each trial is two command-line runs). For each of SFT, reward
modelling and PPO (small configs), one uninterrupted run is the reference; each trial
starts the same command, kills it after a random delay, re-runs it to the end, and checks
that ``metrics.jsonl`` and ``samples.jsonl`` are byte-identical to the reference's and the
summary's numbers equal. ``tests/test_resume.py`` holds the deterministic versions.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config.model.d_model=32", "--config.model.d_ff=64", "--config.train.log_every=1",
          "--config.train.tensorboard=False"]
STAGES = {
    "sft": ["--config=configs/sft/quickstart.py", "--config.train.steps=40",
            "--config.train.eval_every=10", "--config.train.checkpoint_every=7",
            "--config.data.num_train=256", "--config.data.num_eval=32",
            "--config.train.batch_size=16"],
    "reward": ["--config=configs/reward/quickstart.py", "--config.train.steps=40",
               "--config.train.eval_every=10", "--config.train.checkpoint_every=7",
               "--config.reward.num_train_pairs=256", "--config.reward.num_eval_pairs=64",
               "--config.reward.num_reference=64", "--config.train.batch_size=16"],
    "ppo": ["--config=configs/ppo/quickstart.py", "--config.train.steps=8",
            "--config.train.eval_every=3", "--config.train.checkpoint_every=2",
            "--config.ppo.num_prompts=128", "--config.sampling.num_eval_prompts=16",
            "--config.train.batch_size=16", "--config.ppo.num_minibatches=2",
            "--config.ppo.ppo_epochs=2"],
}
LOGS = ("metrics.jsonl", "samples.jsonl")


def _command(stage: str, workdir: str, root: str) -> list[str]:
    extra = []
    if stage in ("reward", "ppo"):
        extra.append(f"--config.policy_init={root}/sft_ref")
    if stage == "ppo":
        extra.append(f"--config.reward_init={root}/reward_ref")
    return [sys.executable, "-m", "jaxrlhf", stage, f"--workdir={workdir}", *STAGES[stage],
            *COMMON, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAXRLHF_NO_PROGRESS="1")
    env.pop("XLA_FLAGS", None)
    return env


def _run(stage: str, workdir: str, root: str) -> float:
    start = time.perf_counter()
    subprocess.run(_command(stage, workdir, root), cwd=REPO, env=_env(), check=True,
                   capture_output=True)
    return time.perf_counter() - start


def _read(path: str) -> bytes | None:
    if not os.path.exists(path):  # e.g. reward modelling writes no samples
        return None
    with open(path, "rb") as f:
        return f.read()


def _numbers(workdir: str) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="kill_trials_")
    results = []
    for stage in STAGES:
        reference = os.path.join(root, f"{stage}_ref")
        duration = _run(stage, reference, root)
        for trial in range(args.trials if stage in args.stages.split(",") else 0):
            workdir = os.path.join(root, f"{stage}_{trial}")
            delay = rng.uniform(0.2, 1.0) * duration
            process = subprocess.Popen(_command(stage, workdir, root), cwd=REPO, env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            killed = process.poll() is None
            if killed:
                process.send_signal(signal.SIGKILL)
            process.wait()
            _run(stage, workdir, root)
            same = {name: _read(os.path.join(workdir, name)) ==
                    _read(os.path.join(reference, name)) for name in LOGS}
            same["summary numbers"] = _numbers(workdir) == _numbers(reference)
            ok = all(same.values())
            results.append(ok)
            print(f"{stage:6s} trial {trial}: killed at {delay:5.1f} s of {duration:5.1f} s"
                  f"{'' if killed else ' (had finished)'}: "
                  f"{'identical' if ok else 'DIFFERENT ' + str(same)}", flush=True)
    print(f"{sum(results)} of {len(results)} trials identical to the uninterrupted run")


if __name__ == "__main__":
    main()
