"""Where a compiled program's time goes, op by op: a ``jax.profiler`` trace of its calls
joined with its optimised HLO.

    python -m benchmarks.sft --trace DIR      # any stage benchmark: traces its main program
    python -m benchmarks.op_profile DIR       # the table again, from DIR

XLA:CPU runs a program as a sequence of thunks, each one HLO instruction of the optimised
module (a fusion, a dot, a copy, ...), and the profiler records each thunk's wall time.
Every thunk is put in a class — ``matmul`` when it is or fuses a dot or convolution, else
``elementwise / reduce``, ``copy / layout`` (copies, transposes, broadcasts, slices), or
its opcode — and attributed to the Python function and line that produced its root
instruction (the HLO's stack-frame metadata), so the time outside the matmuls can be traced
to the code that asks for it (attention's softmax, the log-softmax over the vocabulary, the
layer norms, the optimizer update, ...).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
from typing import Any

HLO_FILE = "program.hlo.txt"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \S+ (\w[\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^%([\w.\-]+) .*\{$")
_LAYOUT = {"copy", "transpose", "broadcast", "slice", "dynamic-slice", "dynamic-update-slice",
           "concatenate", "pad", "reshape", "bitcast", "gather", "scatter", "iota"}


def _table(text: str, heading: str, pattern: str) -> dict[int, tuple[str, ...]]:
    """A metadata table of the HLO text (``FileNames``, ``FunctionNames``, ...): id -> fields."""
    block = re.search(rf"^{heading}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    rows = re.findall(pattern, block.group(1)) if block else []
    return {int(row[0]): row[1:] for row in rows}


def _frames(text: str) -> dict[int, str]:
    """stack-frame id -> ``file:function:line`` of its innermost location."""
    files = _table(text, "FileNames", r'(\d+) "(.*)"')
    functions = _table(text, "FunctionNames", r'(\d+) "(.*)"')
    locations = _table(text, "FileLocations",
                       r"(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)")
    frames = _table(text, "StackFrames", r"(\d+) \{file_location_id=(\d+)")
    out = {}
    for frame, (location,) in frames.items():
        file_id, function_id, line = locations[int(location)]
        out[frame] = (f"{os.path.basename(files[int(file_id)][0])}:"
                      f"{functions[int(function_id)][0]}:{line}")
    return out


def instructions(text: str) -> dict[str, dict[str, Any]]:
    """Every instruction of the HLO text: name -> opcode, the computation it calls (a
    fusion's), its stack frame, and whether its own computation holds a dot."""
    out, computation = {}, None
    bodies: dict[str, set[str]] = collections.defaultdict(set)   # computation -> opcodes
    roots: dict[str, str] = {}                                   # computation -> its ROOT
    for line in text.splitlines():
        if m := _COMPUTATION.match(line):
            computation = m.group(1)
            continue
        if not (m := _INSTRUCTION.match(line)):
            continue
        name, opcode, rest = m.groups()
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        out[name] = {"opcode": opcode, "calls": calls.group(1) if calls else None,
                     "frame": int(frame.group(1)) if frame else None}
        bodies[computation].add(opcode)
        if line.lstrip().startswith("ROOT"):
            roots[computation] = name
    for item in out.values():
        item["body"] = bodies.get(item["calls"], set())
        item["has_dot"] = bool((item["body"] | {item["opcode"]}) & {"dot", "convolution"})
        root = out.get(roots.get(item["calls"], ""), {})
        if item["frame"] is None:          # a fusion: where its root instruction came from
            item["frame"] = root.get("frame")
    return out


def op_class(item: dict[str, Any]) -> str:
    """The class of a thunk's instruction (see the module docstring)."""
    if item["has_dot"]:
        return "matmul"
    ops = item["body"] or {item["opcode"]}
    if ops <= _LAYOUT | {"parameter", "constant", "tuple", "get-tuple-element"}:
        return "copy / layout"
    if item["opcode"] in ("fusion", "add", "multiply", "reduce", "exponential", "select"):
        return "elementwise / reduce"
    return item["opcode"]


def thunk_times(trace_dir: str) -> dict[str, list[float]]:
    """name -> [total microseconds, count] of the complete events of the newest trace."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                             recursive=True))
    if not paths:
        raise SystemExit(f"{trace_dir}: no perfetto_trace.json.gz (run a benchmark with "
                         "--trace DIR first)")
    with gzip.open(paths[-1]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$"):
            out[e["name"]][0] += e.get("dur", 0.0)
            out[e["name"]][1] += 1
    return out


def summarise(trace_dir: str, calls: int) -> dict[str, Any]:
    """Per call: seconds in the program's thunks by class, and the costliest places (the
    Python function of each thunk) outside the matmuls."""
    with open(os.path.join(trace_dir, HLO_FILE)) as f:
        text = f.read()
    ops, frames, times = instructions(text), _frames(text), thunk_times(trace_dir)
    by_class: dict[str, float] = collections.Counter()
    by_place: dict[str, float] = collections.Counter()
    for name, (micros, _) in times.items():
        item = ops.get(name)
        if item is None:
            continue                       # runtime events, not the program's own thunks
        kind, seconds = op_class(item), micros / 1e6 / calls
        by_class[kind] += seconds
        if kind != "matmul":
            by_place[frames.get(item["frame"], "(no source)") + f" [{kind}]"] += seconds
    total = sum(by_class.values())
    return {"seconds_in_thunks": total, "calls": calls,
            "by_class": {k: {"seconds": v, "share": v / total}
                         for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
            "outside_matmuls": [{"where": k, "seconds": v, "share": v / total}
                                for k, v in by_place.most_common(12)]}


def lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a markdown table."""
    out = ["| class | ms / call | share |", "|---|---:|---:|"]
    out += [f"| {k} | {1e3 * v['seconds']:.1f} | {100 * v['share']:.0f} % |"
            for k, v in summary["by_class"].items()]
    out += ["", "| outside the matmuls: where | ms / call | share |", "|---|---:|---:|"]
    out += [f"| `{row['where']}` | {1e3 * row['seconds']:.1f} | {100 * row['share']:.1f} % |"
            for row in summary["outside_matmuls"]]
    return out


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else ""
    with open(os.path.join(directory, "calls.txt")) as f:
        print("\n".join(lines(summarise(directory, int(f.read())))))
