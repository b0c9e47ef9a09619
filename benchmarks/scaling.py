"""Seconds per SFT step against sequence length and against model size (the scaling table).

    python -m benchmarks.scaling [--repeats 3] [--json benchmarks/results/scaling.json]

Two sweeps of ``benchmarks.sft`` (fp32 unless ``--dtype``) with random weights: a 4 x 256 GPT-2 at 64 to 1024
tokens per row, and GPT-2 shapes from 4 x 128 to 12 x 768 at 128 tokens per row; a batch of
8 rows throughout.
"""
from __future__ import annotations

import argparse
from typing import Any

from benchmarks import common, sft

SEQUENCE_SWEEP = {"model": "gpt2_4x256", "seqs": (64, 128, 256, 512, 1024)}
SIZE_SWEEP = {"seq": 128, "models": ("gpt2_4x128", "gpt2_4x256", "gpt2_4x512", "gpt2_8x512",
                                     "gpt2_12x768")}
BATCH = 8


def point(axis: str, model: str, seq: int, args: argparse.Namespace) -> dict[str, Any]:
    """One SFT benchmark at (model, seq), reduced to the table's fields."""
    options = ["--model", model, "--seq", str(seq), "--batch", str(BATCH),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--dtype", args.dtype, "--peak_tflops", str(args.peak_tflops),
               "--peak_gbps", str(args.peak_gbps), "--peak_source", args.peak_source]
    r = sft.run(sft_parser().parse_args(options))
    return {"axis": axis, "model": model, "seq": seq, "batch": BATCH,
            "parameters": r["parameters"], "seconds_min": r["seconds_per_step"]["min"],
            "seconds_median": r["seconds_per_step"]["median"],
            "tokens_per_sec_min": r["tokens_per_sec_min"], "model_tflops_min": r["model_tflops_min"],
            "mfu_min": r["mfu_min"], "peak_tflops": r["peak_tflops"],
            "compiled_peak_bytes": r["compiled_memory"]["peak_bytes"]}


def sft_parser() -> argparse.ArgumentParser:
    parser = common.parser("")
    parser.add_argument("--grad_accum", type=int, default=1)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = [point("seq", SEQUENCE_SWEEP["model"], seq, args) for seq in SEQUENCE_SWEEP["seqs"]]
    rows += [point("size", model, SIZE_SWEEP["seq"], args) for model in SIZE_SWEEP["models"]]
    return {"benchmark": "scaling", "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--peak_tflops", type=float, default=0.0)
    parser.add_argument("--peak_gbps", type=float, default=0.0)
    parser.add_argument("--peak_source", default="command line")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
