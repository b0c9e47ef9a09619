"""Run the whole benchmark suite, then regenerate the tables and figures (one command).

    python -m benchmarks.run_all [--quick] [--skip presets_memory,scaling] [--repeats 5]

Each benchmark runs in its own process at the shapes ``benchmarks/README.md`` reports and
writes ``benchmarks/results/NAME.json``; ``benchmarks.report`` then writes
``benchmarks/results/tables.md`` and ``benchmarks/figures/scaling_*.png``. On an
accelerator the same command runs unchanged (add ``--dtype bfloat16`` for its bf16 numbers);
``--quick`` runs every benchmark at a tiny shape to check the suite end to end.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# name -> (module, arguments) at the README's shapes
SUITE = {
    "sft": ("sft", ["--model", "gpt2_4x256", "--batch", "16", "--seq", "128"]),
    "reward": ("reward", ["--model", "gpt2_4x256", "--batch", "16", "--seq", "128"]),
    "ppo": ("ppo", ["--model", "gpt2_4x256", "--batch", "64", "--prompt", "16",
                    "--response", "48", "--minibatches", "4", "--epochs", "4"]),
    "dpo": ("dpo", ["--model", "gpt2_4x256", "--batch", "16", "--prompt", "16",
                    "--response", "112"]),
    "dpo_llama": ("dpo", ["--model", "llama_4x256_kv4_tied", "--batch", "16", "--prompt", "16",
                          "--response", "112"]),
    "grpo": ("grpo", ["--model", "gpt2_4x256", "--prompts", "16", "--generations", "4",
                      "--prompt", "16", "--response", "48"]),
    "grpo_llama": ("grpo", ["--model", "llama_4x256_kv4_tied", "--prompts", "16",
                            "--generations", "4", "--prompt", "16", "--response", "48"]),
    # large enough (>= 150 MB read per step) that the weights and cache leave the CPU caches
    "decode": ("decode", ["--model", "gpt2_8x512", "--batch", "16", "--prompt", "128",
                          "--new", "128"]),
    "decode_gqa": ("decode", ["--model", "llama_8x512", "--batch", "16", "--prompt", "128",
                              "--new", "128"]),
    "scaling": ("scaling", []),
    "presets_memory": ("presets_memory", []),
}
QUICK = {
    "sft": ["--model", "gpt2_1x32", "--batch", "8", "--seq", "16"],
    "reward": ["--model", "gpt2_1x32", "--batch", "8", "--seq", "16"],
    "ppo": ["--model", "gpt2_1x32", "--batch", "8", "--prompt", "4", "--response", "4",
            "--minibatches", "1", "--epochs", "1"],
    "dpo": ["--model", "gpt2_1x32", "--batch", "8", "--prompt", "4", "--response", "8"],
    "dpo_llama": ["--model", "llama_1x64_kv2_tied", "--batch", "8", "--prompt", "4",
                  "--response", "8"],
    "grpo": ["--model", "gpt2_1x32", "--prompts", "8", "--generations", "2", "--prompt", "4",
             "--response", "4"],
    "grpo_llama": ["--model", "llama_1x64_kv2_tied", "--prompts", "8", "--generations", "2",
                   "--prompt", "4", "--response", "4"],
    "decode": ["--model", "gpt2_1x32", "--batch", "4", "--prompt", "4", "--new", "4"],
    "decode_gqa": ["--model", "llama_1x64", "--batch", "4", "--prompt", "4", "--new", "4"],
}
TIMED = ("sft", "reward", "ppo", "dpo", "grpo", "decode")


def reference_peaks(args: argparse.Namespace) -> list[str]:
    """``--peak_*`` flags shared by every benchmark, so that all MFU and roofline fractions
    have one reference: the given ones, none (the table) on an accelerator, or this CPU's
    best of 20 measurements (on a shared machine a single measurement can catch a busy
    moment)."""
    if args.peak_tflops and args.peak_gbps:
        return ["--peak_tflops", str(args.peak_tflops), "--peak_gbps", str(args.peak_gbps),
                "--peak_source", args.peak_source]
    import jax
    if jax.default_backend() != "cpu":
        return []
    from benchmarks.common import measure_cpu_peaks
    measured = measure_cpu_peaks(repeats=20)
    print(f"CPU peaks (best of 20): {measured['tflops']:.3f} TFLOP/s, "
          f"{measured['gbps']:.1f} GB/s", flush=True)
    return ["--peak_tflops", f"{measured['tflops']:.4f}", "--peak_gbps", f"{measured['gbps']:.2f}",
            "--peak_source", "this CPU, best of 20 (2048^3 fp32 matmul, 512 MiB read)"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's peak for every benchmark (default: the table; on "
                             "a CPU, measured once here, best of 20)")
    parser.add_argument("--peak_gbps", type=float, default=0.0)
    parser.add_argument("--peak_source", default="command line",
                        help="where the given --peak_* numbers come from")
    parser.add_argument("--results", default=RESULTS, help="where the JSON and tables go")
    parser.add_argument("--figures", default=os.path.join(HERE, "figures"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        skip |= set(SUITE) - set(QUICK)
    repo = os.path.dirname(HERE)
    peaks = reference_peaks(args)
    for name, (module, options) in SUITE.items():
        if name in skip:
            continue
        options = QUICK[name] if args.quick else options
        if module in TIMED:
            options = [*options, "--repeats", str(args.repeats), "--dtype", args.dtype, *peaks]
        elif module == "scaling":
            options = [*options, "--dtype", args.dtype, *peaks]
        command = [sys.executable, "-m", f"benchmarks.{module}", *options,
                   "--json", os.path.join(args.results, f"{name}.json")]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=repo, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "benchmarks.report", "--results", args.results,
                    "--figures", args.figures], cwd=repo, check=True)


if __name__ == "__main__":
    main()
