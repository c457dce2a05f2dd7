"""The architecture, checked: every import in the packages goes down the layers, never up, and
no two modules import each other (directly or round a loop).

    export.core      models, shapes, errors, files, checkpoints, weights, manifests  (the ground)
    export.data      sources, dataset layouts, splits, pixels and the one preprocess
    export.runtime   the runtime registry, one runner per runtime, load_artifact     (runs models)
    export.train     the loop, training datasets, run folders, plots, resnet-train
    export.convert   ONNX, FP16, INT8 (+ calibration), TensorRT build, Triton repository
    export.gate      the tolerance table, the comparator, the gate's candidate runners
    export.*         the pipeline (the order of the steps) and resnet-export
    bench, predict   resnet-bench / resnet-predict, on top of the runtime and the exporters
    plan, serve      resnet-plan / resnet-serve, on top of everything
    batch            resnet-batch, on top of everything (reuses predict's Predictor and scoring)
    release          resnet-gate: a candidate checked against a release, on top of everything

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "bench")

#: (module prefix, rank); the first prefix that matches decides
LAYERS = [("export.core", 0), ("export.data", 1), ("export.runtime", 1), ("export.train", 2),
          ("export.convert", 3), ("export.gate", 3), ("export.predict", 5), ("export.plan", 6),
          ("export.serve", 6), ("export.batch", 6), ("export.release", 6), ("export", 4),
          ("bench", 5)]
#: ranks whose packages are leaves: siblings of the same rank may not import each other
LEAF_RANKS = (5, 6)
#: edges that the ranks allow but the architecture does not: CLIs and orchestration are leaves
FORBIDDEN = [("bench", "export.cli"), ("bench", "export.pipeline"), ("bench", "export.predict"),
             ("export.predict", "bench"), ("export.predict", "export.cli"),
             ("export.predict", "export.pipeline"), ("export.serve", "export.cli"),
             ("export.serve", "export.pipeline"), ("export.serve", "bench"),
             ("export.batch", "export.cli"), ("export.batch", "export.pipeline"),
             ("export.batch", "bench")]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (relative imports resolved, ``from pkg import mod`` too)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _rank(module: str) -> int:
    return next(rank for prefix, rank in LAYERS
                if module == prefix or module.startswith(prefix + "."))


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _leaf(module: str) -> str:
    """The leaf package a module belongs to (``bench``, ``export.predict``, ...)."""
    return ".".join(module.split(".")[:2]) if module.startswith("export.") else \
        module.split(".")[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_imports_go_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        if module == "export":  # the package's front door re-exports the ground's API
            assert all(_rank(t) == 0 for t in targets if t != "export"), targets
            continue
        for target in targets:
            if target == "export":  # only export.__version__ comes from there
                continue
            if _rank(target) > _rank(module):
                upward.append(f"{module} -> {target}")
            if _rank(target) == _rank(module) and _rank(module) in LEAF_RANKS and \
                    _leaf(module) != _leaf(target):
                upward.append(f"{module} -> {target} (sibling leaves)")
            for source, forbidden in FORBIDDEN:
                if _within(module, source) and _within(target, forbidden):
                    upward.append(f"{module} -> {target} (forbidden edge)")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    for name in graph:  # a package's __init__ may import its own modules; that is no cycle
        graph[name] = {t for t in graph[name] if not _within(t, name)}
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state[nxt] == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state[nxt] == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_real_edges():
    """Guard against a checker that passes because it parsed nothing."""
    graph = _graph()
    assert "export.core.models" in graph["export.runtime.tensorrt_runner"] or \
        "export.core.errors" in graph["export.runtime.tensorrt_runner"]
    assert "export.runtime.loader" in graph["bench.matrix"]
    assert "export.core.artifact" in graph["export.runtime.loader"]
