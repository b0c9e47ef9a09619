"""Execute the notebooks headless with nbclient: in full to refresh their committed outputs,
or in SMOKE mode (every size shrunk) as CI does.

    python -m notebooks.run                          # full run; saves outputs into each .ipynb
    python -m notebooks.run --smoke [--workdir DIR]  # tiny sizes; outputs are not saved
    python -m notebooks.run 02_ppo_ablations         # only the named notebooks

Parameters follow papermill's convention: the cell tagged ``parameters`` holds the defaults
(``SMOKE = False``, ``WORKDIR = "runs/notebooks"``) and a cell tagged
``injected-parameters`` is inserted after it with the values of this run. The kernel runs
in the repository root with the repository first on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Mapping, Sequence

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
# SMOKE runs are dominated by XLA compilation, not arithmetic: compile without the
# expensive LLVM passes (about 3x faster to compile on CPU; the numbers of a smoke run are
# not looked at).
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def notebooks(names: Sequence[str] = ()) -> list[str]:
    """The notebooks' paths in order, or those whose file name starts with one of
    ``names``."""
    paths = sorted(os.path.join(NOTEBOOK_DIR, f) for f in os.listdir(NOTEBOOK_DIR)
                   if f.endswith(".ipynb"))
    if names:
        paths = [p for p in paths if os.path.basename(p).startswith(tuple(names))]
        if not paths:
            raise ValueError(f"no notebook in {NOTEBOOK_DIR} starts with any of {list(names)}")
    return paths


def kernel_environment(smoke: bool, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, one device
    (an ``XLA_FLAGS`` from the caller, e.g. pytest's 8 emulated devices, is dropped) and, in
    SMOKE mode, the quick-compile XLA flags."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
    env["JAXRLHF_NO_PROGRESS"] = "1"
    if smoke:
        env["XLA_FLAGS"] = SMOKE_XLA_FLAGS
    env.update(extra or {})
    return env


def with_parameters(notebook: nbformat.NotebookNode,
                    parameters: Mapping[str, object]) -> nbformat.NotebookNode:
    """A copy with a cell assigning ``parameters`` after the cell tagged ``parameters``."""
    notebook = copy.deepcopy(notebook)
    tagged = [i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"a notebook needs exactly one cell tagged 'parameters', found "
                         f"{len(tagged)}")
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, cell)
    return notebook


def execute(path: str, *, smoke: bool, workdir: str | None = None, timeout: int = 3600,
            env: Mapping[str, str] | None = None) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` and return it with its outputs; raises
    ``CellExecutionError`` (naming the cell and the error) when a cell fails."""
    notebook = nbformat.read(path, as_version=4)
    parameters = {"SMOKE": True} if smoke else {}
    if workdir is not None:
        parameters["WORKDIR"] = workdir
    run = with_parameters(notebook, parameters) if parameters else notebook
    client = NotebookClient(run, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": REPO}})
    client.execute(env=kernel_environment(smoke, env))
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook file-name prefixes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="shrink every size (CI)")
    parser.add_argument("--workdir", default=None, help="where the notebooks' runs go")
    args = parser.parse_args(argv)
    failed = []
    for path in notebooks(args.names):
        start = time.perf_counter()
        try:
            executed = execute(path, smoke=args.smoke, workdir=args.workdir)
        except CellExecutionError as e:
            failed.append(path)
            print(f"FAILED {os.path.relpath(path, REPO)}\n{e}", file=sys.stderr)
            continue
        if not args.smoke:
            nbformat.write(executed, path)
        print(f"ok {os.path.relpath(path, REPO)} ({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
