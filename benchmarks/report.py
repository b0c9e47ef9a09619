"""The benchmark tables and figures, from the JSON results of ``benchmarks.run_all``.

    python -m benchmarks.report [--results benchmarks/results] [--figures benchmarks/figures]

Writes ``RESULTS/tables.md`` (the tables ``benchmarks/README.md`` shows) and the scaling
figures ``FIGURES/scaling_seq.png`` and ``FIGURES/scaling_size.png``.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _load(results: str, name: str) -> Any:
    path = os.path.join(results, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _machine(r: dict[str, Any]) -> str:
    e = r["environment"]
    cpu = f", {e['cpu_model']} ({e['vector_isa']})" if "cpu_model" in e else ""
    return (f"{e['devices']} x {e['device_kind']} ({e['cpu_count']} cores{cpu}), "
            f"jax {e['jax']}, load average {e['load_average_1m']:.1f} at the start")


STAGES = ("sft", "reward", "ppo", "dpo", "dpo_llama", "grpo", "grpo_llama")


def _shape_and_seconds(r: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """A stage result's shape in words and its seconds per step (an RL iteration; DPO's
    step with the reference forward a peer recomputes)."""
    o, kind = r["options"], r["benchmark"]
    if kind == "ppo":
        return (f"{o['model']}, {o['batch']} prompts x ({o['prompt']} + {o['response']}), "
                f"{o['minibatches']} x {o['epochs']} updates", r["seconds"]["iteration"])
    if kind == "grpo":
        return (f"{o['model']}, {o['prompts']} prompts x {o['generations']} x "
                f"({o['prompt']} + {o['response']}), 1 update", r["seconds"]["iteration"])
    if kind == "dpo":
        return (f"{o['model']}, {o['batch']} pairs x ({o['prompt']} + {o['response']}), "
                "reference included", r["seconds"]["step_and_reference"])
    return f"{o['model']}, batch {o['batch']} x {o['seq']}", r["seconds_per_step"]


def stage_table(results: str) -> list[str]:
    lines = ["| benchmark | shape | s / step (min, median) | tokens/s | model TFLOP/s | "
             "MFU | peak TFLOP/s (source) | compiled peak memory |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    found = [(name, r) for name in STAGES if (r := _load(results, name)) is not None]
    for name, r in found:
        shape, seconds = _shape_and_seconds(r)
        lines.append(
            f"| {name} | {shape}, {r['options']['dtype']} | {seconds['min']:.3f}, "
            f"{seconds['median']:.3f} | {r['tokens_per_sec_min']:,.0f} | "
            f"{r['model_tflops_min']:.3f} | {100 * r['mfu_min']:.1f} % | "
            f"{r['peak_tflops']:.3f} ({r['peak_source']}) | "
            f"{r['compiled_memory']['peak_bytes'] / 2 ** 20:.0f} MiB |")
    if found:
        lines.append(f"\nMachine: {_machine(found[0][1])}.")
    return lines


def rl_split(results: str, name: str) -> list[str]:
    """The sampling / scoring / update split of a PPO or GRPO iteration."""
    r = _load(results, name)
    if r is None:
        return []
    s = r["seconds"]
    lines = ["| phase | s (min) | share of the iteration | MFU |", "|---|---:|---:|---:|"]
    for phase in ("sampling", "scoring", "update"):
        lines.append(f"| {phase} | {s[phase]['min']:.3f} | "
                     f"{100 * s[phase]['min'] / s['iteration']['min']:.0f} % | "
                     f"{100 * r[f'mfu_{phase}_min']:.1f} % |")
    lines.append(f"| iteration (one program) | {s['iteration']['min']:.3f} | | "
                 f"{100 * r['mfu_min']:.1f} % |")
    return lines


def dpo_split(results: str) -> list[str]:
    """DPO's step and the reference forward, for each model shape measured."""
    rows = [(name, r) for name in ("dpo", "dpo_llama") if (r := _load(results, name))]
    if not rows:
        return []
    lines = ["| benchmark | step s (min) | reference forward s (min) | pairs/s with it | "
             "pairs/s without |", "|---|---:|---:|---:|---:|"]
    for name, r in rows:
        s = r["seconds"]
        lines.append(f"| {name} ({r['options']['model']}) | {s['step']['min']:.3f} | "
                     f"{s['reference']['min']:.3f} | {r['pairs_per_sec_min']:.1f} | "
                     f"{r['step_pairs_per_sec_min']:.1f} |")
    return lines


def decode_table(results: str) -> list[str]:
    lines = ["| shape | decode tokens/s | s / step | bytes / token | achieved GB/s | "
             "roofline fraction (peak GB/s) | MFU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("decode", "decode_gqa"):
        r = _load(results, name)
        if r is None:
            continue
        o = r["options"]
        lines.append(
            f"| {o['model']}, batch {o['batch']}, prompt {o['prompt']} + {o['new']} new, "
            f"{o['dtype']} compute, {o['param_dtype']} weights | "
            f"{r['decode_tokens_per_sec_min']:,.0f} | {r['decode_step_seconds']['min']:.4f} | "
            f"{r['bytes_per_token'] / 1e3:,.1f} kB | {r['achieved_gbps_min']:.2f} | "
            f"{100 * r['roofline_fraction_min']:.0f} % ({r['peak_gbps']:.1f}) | "
            f"{100 * r['mfu_min']:.1f} % |")
    return lines


def scaling_table(results: str) -> list[str]:
    r = _load(results, "scaling")
    if r is None:
        return []
    lines = ["| sweep | model | parameters | tokens / row | s / step (min, median) | "
             "tokens/s | model TFLOP/s | MFU |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(
            f"| {row['axis']} | {row['model']} | {row['parameters'] / 1e6:.2f} M | {row['seq']} "
            f"| {row['seconds_min']:.3f}, {row['seconds_median']:.3f} | "
            f"{row['tokens_per_sec_min']:,.0f} | {row['model_tflops_min']:.3f} | "
            f"{100 * row['mfu_min']:.1f} % |")
    return lines


def presets_table(results: str) -> list[str]:
    r = _load(results, "presets_memory")
    if r is None:
        return []
    lines = ["| preset | stage | program | peak per device | arguments | temporaries | "
             "mesh |", "|---|---|---|---:|---:|---:|---|"]
    for row in r["rows"]:
        gib = lambda n: f"{n / 2 ** 30:.2f} GiB"  # noqa: E731
        lines.append(f"| {row['preset']} | {row['stage']} | {row['program']} | "
                     f"{gib(row['peak_bytes'])} | {gib(row['argument_bytes'])} | "
                     f"{gib(row['temp_bytes'])} | {row['devices']} devices {row['mesh']} |")
    return lines


def scaling_figures(results: str, figures: str) -> list[str]:
    r = _load(results, "scaling")
    if r is None:
        return []
    os.makedirs(figures, exist_ok=True)
    written = []
    for axis, x_key, label in (("seq", "seq", "tokens per row"),
                               ("size", "parameters", "parameters")):
        rows = [row for row in r["rows"] if row["axis"] == axis]
        fig = Figure(figsize=(5, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        x = [row[x_key] for row in rows]
        ax.loglog(x, [row["seconds_min"] for row in rows], "o-", label="measured (min)")
        first = rows[0]
        ax.loglog(x, [first["seconds_min"] * v / x[0] for v in x], "--", color="gray",
                  label="linear in " + label)
        for row in rows:
            ax.annotate(row["model"] if axis == "size" else str(row["seq"]),
                        (row[x_key], row["seconds_min"]), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per SFT step")
        ax.set_title(f"SFT step vs {label} (batch {first['batch']})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(figures, f"scaling_{axis}.png")
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--results", default=os.path.join(here, "results"))
    parser.add_argument("--figures", default=os.path.join(here, "figures"))
    args = parser.parse_args(argv)
    sections = [("Stage steps", stage_table(args.results)),
                ("PPO iteration split", rl_split(args.results, "ppo")),
                ("GRPO step split", rl_split(args.results, "grpo")),
                ("DPO step and reference forward", dpo_split(args.results)),
                ("Decoding", decode_table(args.results)),
                ("Scaling", scaling_table(args.results)),
                ("Preset memory (dry run)", presets_table(args.results))]
    text = "\n\n".join(f"### {title}\n\n" + "\n".join(lines) for title, lines in sections if lines)
    path = os.path.join(args.results, "tables.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    for figure in scaling_figures(args.results, args.figures):
        print(f"wrote {figure}")
    print(f"wrote {path}")
    return text


if __name__ == "__main__":
    main()
