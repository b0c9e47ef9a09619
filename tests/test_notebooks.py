"""Every notebook executes headless in SMOKE mode (CI fails when one errors), and the
committed notebooks carry the outputs of a full run."""
import os

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from notebooks import run as runner

NOTEBOOKS = runner.notebooks()
IDS = [os.path.basename(p).removesuffix(".ipynb") for p in NOTEBOOKS]


def test_the_notebooks_are_there():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_ppo_ablations.ipynb",
            "03_reward_model_ablations.ipynb"} <= names


# The longest smoke run (80 s, 13 PPO variants) runs with -m slow, keeping the default suite
# under 15 minutes.
SLOW_SMOKE = ("02_ppo_ablations",)


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if i in SLOW_SMOKE else p
    for p, i in zip(NOTEBOOKS, IDS)], ids=IDS)
def test_notebook_executes_in_smoke_mode(path, smoke_root):
    executed = runner.execute(path, smoke=True, workdir=str(smoke_root / "runs"), timeout=900)
    injected = [c for c in executed.cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "SMOKE = True" in injected[0].source


def test_a_failing_cell_fails_the_run(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("SMOKE = False", metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell("assert not SMOKE, 'ran in SMOKE mode'")]
    path = tmp_path / "failing.ipynb"
    nbformat.write(notebook, str(path))
    runner.execute(str(path), smoke=False, timeout=120)  # the default passes
    with pytest.raises(CellExecutionError, match="ran in SMOKE mode"):
        runner.execute(str(path), smoke=True, timeout=120)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_holds_a_full_run(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell has been executed"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "SMOKE = False" in parameters[0].source
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "a figure"
    text = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "## What the numbers show" in text and "FINDINGS" not in text
