"""Two processes (``jax.distributed`` on localhost, gloo CPU collectives, 2 emulated devices
each) run SFT — stopped half-way and resumed — and one PPO iteration, and must match one
process with 4 devices: the same metrics, every log row written once, every run file
written whole by process 0 alone."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO
from notebooks.run import SMOKE_XLA_FLAGS

SFT = {"model.d_model": 32, "model.d_ff": 64, "data.num_train": 32, "data.num_eval": 8,
       "train.batch_size": 8, "train.steps": 4, "train.log_every": 1, "train.eval_every": 2,
       "train.checkpoint_every": 2, "train.num_samples": 2, "train.sample_tokens": 4,
       "train.tensorboard": False}
PPO = {"train.steps": 1, "train.log_every": 1, "train.eval_every": 1, "train.num_samples": 2,
       "train.tensorboard": False, "ppo.reward_source": "gold", "ppo.value_init": "policy",
       "ppo.num_prompts": 32, "sampling.num_eval_prompts": 8, "train.batch_size": 8,
       "ppo.num_minibatches": 2, "ppo.ppo_epochs": 1, "sampling.response_length": 8}

# One process's work: SFT stopped after 2 of 4 steps, SFT resumed, one PPO iteration.
WORKER = """
import json, sys
from jaxrlhf import api, parallel
parallel.initialize_distributed()
root, sft, ppo, split = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
if split == "1":
    api.run("sft", api.load_config("configs/sft/quickstart.py", **sft, **{"train.run_steps": 2}),
            root + "/sft")
api.run("sft", api.load_config("configs/sft/quickstart.py", **sft), root + "/sft")
api.run("ppo", api.load_config("configs/ppo/quickstart.py", policy_init=root + "/sft", **ppo),
        root + "/ppo")
"""


def _launch(root, *, processes, devices, split):
    # The quick-compile flags of SMOKE runs: these runs are tiny, compiling is their cost.
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
               + SMOKE_XLA_FLAGS,
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAXRLHF_NO_PROGRESS="1")
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
    workers = [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), json.dumps(SFT), json.dumps(PPO), split],
        cwd=REPO, env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(processes)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]
    return outputs


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_processes_match_one_and_write_each_row_once(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    outputs = _launch(two, processes=2, devices=2, split="1")
    assert all("resuming from step 2" in out for out in outputs)
    _launch(one, processes=1, devices=4, split="0")
    for stage, steps in (("sft", [0, 1, 2, 3, 4]), ("ppo", [0, 1])):
        rows_two, rows_one = _rows(two / stage / "metrics.jsonl"), _rows(one / stage / "metrics.jsonl")
        assert [r["step"] for r in rows_two] == steps          # each row once, in order
        assert [sorted(r) for r in rows_two] == [sorted(r) for r in rows_one]
        for a, b in zip(rows_two, rows_one):
            np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)],
                                       rtol=2e-4, atol=1e-6)
        samples = _rows(two / stage / "samples.jsonl")
        assert len(samples) == len(_rows(one / stage / "samples.jsonl"))
        assert len({(s["step"], s["prompt"]) for s in samples}) == len(samples)
        for name in ("config.json", "model.json", "summary.json"):
            with open(two / stage / name) as f:
                json.load(f)                                     # whole, not interleaved
        leftovers = [n for n in os.listdir(two / stage) if n.startswith(".")]
        assert not leftovers, leftovers                          # no half-written temp files
    assert os.path.isfile(two / "sft" / "tokenizer" / "tokenizer.json")
