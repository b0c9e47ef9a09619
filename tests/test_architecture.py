"""The package's shape: layered imports with no cycle, no import-time side effects, small
files, and citations that resolve inside the repository (docs/design.md, "Module map")."""
import ast
import pathlib
import re
import subprocess
import sys

from conftest import REPO
from jaxrlhf.stages import STAGES

ROOT = pathlib.Path(REPO)
PACKAGE = ROOT / "jaxrlhf"

# Bottom to top: a module may import modules of its own layer or below, never above.
# The longest matching prefix places a module.
LAYERS = (
    ("jaxrlhf.metrics", "jaxrlhf.parallel", "jaxrlhf.data", "jaxrlhf.models", "jaxrlhf.memory",
     "jaxrlhf.analysis", "jaxrlhf.errors", "jaxrlhf.runfiles", "jaxrlhf.choices",
     "jaxrlhf.checks", "jaxrlhf.hub"),
    ("jaxrlhf.baselines", "jaxrlhf.checkpoint", "jaxrlhf.scoring"),
    ("jaxrlhf.losses", "jaxrlhf.policy_losses", "jaxrlhf.sampling", "jaxrlhf.tasks",
     "jaxrlhf.settings", "jaxrlhf.sections", "jaxrlhf.reward_fns"),
    ("jaxrlhf.optim", "jaxrlhf.rl", "jaxrlhf.config", "jaxrlhf.workdir", "jaxrlhf.pairs",
     "jaxrlhf.trackers"),
    ("jaxrlhf.trainers",),
    ("jaxrlhf.stages", "jaxrlhf.pipeline", "jaxrlhf.report", "jaxrlhf.dry_run"),
    ("jaxrlhf.cli", "jaxrlhf.__main__", "jaxrlhf.api"),
)
# The module of every stage in the stage table: none may import another.
STAGE_SHELLS = tuple(stage.train.__module__ for stage in STAGES.values())


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """{module: the jaxrlhf modules it imports}, from the source (local imports included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}")
                         else node.module for a in node.names]
            else:
                continue
            targets.update(n for n in names if n.split(".")[0] == "jaxrlhf")
        graph[_module_name(path)] = targets - {_module_name(path)}
    return graph


def layer(module: str) -> int:
    if module == "jaxrlhf":  # the package's lazy re-export of the API
        return len(LAYERS) - 1
    best = max(((len(p), i) for i, group in enumerate(LAYERS) for p in group
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/design.md"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, and every stage shell importing another."""
    found = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    found += [f"{a} imports the stage shell {b}" for a in STAGE_SHELLS
              for b in graph.get(a, ()) if b in STAGE_SHELLS and b != a]
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return stack + [module, target]
            if target not in state and (cycle := visit(target, stack + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_planted_violations():
    graph = import_graph()
    planted = {**graph, "jaxrlhf.models.transformer": {"jaxrlhf.trainers.loop"},
               "jaxrlhf.trainers.ppo": graph["jaxrlhf.trainers.ppo"] | {"jaxrlhf.trainers.reward"}}
    assert len(upward_imports(planted)) == 2
    assert find_cycle({**graph, "jaxrlhf.scoring": {"jaxrlhf.losses"}}) is not None


def test_importing_every_module_changes_no_process_wide_setting():
    modules = sorted(import_graph())
    # Third-party libraries set their own environment variables and flags on import
    # (scikit-learn's KMP_*, transformers' TF_CPP_MIN_LOG_LEVEL, absl.app's --pdb); import
    # them first so that only what our modules do is measured (our command line registers
    # its flags when it runs, not on import).
    script = f"""
import json, os, sys
import jax, numpy as np
from absl import flags
from flax import nnx
import datasets, matplotlib.figure, optax, orbax.checkpoint, safetensors, scipy.sparse
import sklearn.linear_model, tensorboardX, tokenizers, transformers
import absl.app, ml_collections.config_flags  # absl.app defines its own flags on import
def snapshot():
    return {{"jax": {{k: repr(v) for k, v in jax.config.values.items()}},
             "eager_sharding": nnx.using_eager_sharding(), "numpy": repr(np.geterr()),
             "environ": dict(os.environ), "absl_flags": sorted(flags.FLAGS)}}
before = snapshot()
import importlib
for name in {modules!r}:
    if name != "jaxrlhf.__main__":
        importlib.import_module(name)
after = snapshot()
print(json.dumps([k for k in before if before[k] != after[k]]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_no_file_in_the_package_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_citations_resolve_inside_the_repository():
    code = [p for d in ("jaxrlhf", "benchmarks", "configs", "experiments", "tests")
            for p in (ROOT / d).rglob("*.py")]
    for path in code:
        text = path.read_text()
        if path.name == "test_architecture.py":
            continue
        for outside in ("DESIGN.md", "PPO_DETAILS", "the issue"):
            assert outside not in text, f"{path.relative_to(ROOT)} cites {outside!r}"
        for cited in re.findall(r"docs/[\w./-]+\.md", text):
            assert (ROOT / cited).exists(), f"{path.relative_to(ROOT)} cites missing {cited}"
