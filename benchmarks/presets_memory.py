"""Peak memory per device of every preset's SFT, reward and PPO step, from ``--dry_run``.

    python -m benchmarks.presets_memory [--devices 8] [--json benchmarks/results/presets_memory.json]

Compiles each stage of ``configs/presets/*.py`` for ``--devices`` emulated CPU devices (FSDP
over all of them, as the presets shard) and records XLA's memory analysis; nothing runs.
CPU numbers are a proxy for an accelerator's (``jaxrlhf.memory``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--presets", default="gpt2_124m,qwen2_5_0_5b,llama3_2_1b,llama3_8b")
    parser.add_argument("--stages", default="sft,reward,ppo")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        raise SystemExit("run presets_memory in a fresh process: it sets the device count")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    from benchmarks import common
    from jaxrlhf import dry_run
    from jaxrlhf.config import preset_config
    rows = []
    for name in args.presets.split(","):
        for stage in args.stages.split(","):
            result = dry_run.report(stage, preset_config(name, stage))[stage]
            for program, m in result["programs"].items():
                rows.append({"preset": name, "stage": stage, "program": program,
                             "devices": result["devices"], "mesh": result["mesh"], **m})
                print(dry_run.summary_lines({stage: {**result, "programs": {program: m}}})[0],
                      flush=True)
    return common.finish({"benchmark": "presets_memory", "rows": rows}, args)


if __name__ == "__main__":
    main()
