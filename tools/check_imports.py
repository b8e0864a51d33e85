"""Import graph of abd_edge: the layers, cycles, and what the device runtime pulls in.

    python tools/check_imports.py          # prints the report; exit 1 if a layering rule is broken

Parses the source (nothing is imported), so it also works without torch.
The layers, lowest first: the engine (``abd_edge``: models, data, methods,
loop, dreaming, Learner, the torch-free format modules) <- ``abd_edge.export``
<- ``abd_edge.runtime`` <- ``abd_edge.apps`` (bench, simulate, audit, cli).
Rules checked, counting imports inside functions ("lazy") and modules named
to ``import_or_explain``/``importlib.import_module`` as imports too:
(1) no module imports a module of a higher layer; (2) no import cycle at all;
(3) nothing the runtime imports at module level (transitively) is a
torch/onnx module, the export package, the engine's training modules or the
Learner.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"abd_edge": REPO / "abd_edge", "abd_edge.export": REPO / "export", "abd_edge.runtime": REPO / "runtime"}
HEAVY = {"torch", "torchvision", "onnx", "onnxscript", "safetensors", "opacus", "matplotlib", "sklearn"}
LAYERS = ("engine", "export", "runtime", "apps")  # lowest first: a module may import its own layer and those below
FORBIDDEN_FOR_RUNTIME = ("abd_edge.export", "abd_edge.engine", "abd_edge.learner", "abd_edge.checkpoint", "abd_edge.dreaming")


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts]) if parts else pkg
            if pkg == "abd_edge" and parts and parts[0] in ("export", "runtime"):
                continue
            out[name] = path
    return out


def layer(module: str) -> str:
    if module == "abd_edge.__main__":  # ``python -m abd_edge`` is the command line: an application
        return "apps"
    for name in ("apps", "runtime", "export"):
        if module == f"abd_edge.{name}" or module.startswith(f"abd_edge.{name}."):
            return name
    return "engine"


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(module-level abd_edge imports, lazy abd_edge imports, module-level heavy third-party imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    eager: set[str] = set()
    lazy: set[str] = set()
    heavy: set[str] = set()

    def _named_import(node: ast.AST) -> list[str]:
        """import_or_explain("abd_edge.x", ...) / importlib.import_module("abd_edge.x"): an import by name."""
        if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
            return []
        fn = node.func
        called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        arg = node.args[0].value
        return [arg] if called in ("import_or_explain", "import_module") and isinstance(arg, str) else []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            parts = base.split(".")
            parent = ".".join(parts[: len(parts) - node.level + 1])
            mod = f"{parent}.{node.module}" if node.module else parent
        else:
            mod = node.module or ""
        return [mod] + [f"{mod}.{a.name}" for a in node.names]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            found = targets(child) if isinstance(child, (ast.Import, ast.ImportFrom)) else _named_import(child)
            if found:
                for t in found:
                    if t.split(".")[0] in HEAVY and top:
                        heavy.add(t.split(".")[0])
                    while t and t not in known:
                        t = t.rpartition(".")[0]
                    if t and t != name:
                        (eager if top else lazy).add(t)
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    # importing a submodule runs its packages' __init__ first
    for t in list(eager):
        parts = t.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in known and ".".join(parts[:i]) != name and not name.startswith(".".join(parts[:i]) + "."):
                eager.add(".".join(parts[:i]))
    return eager, lazy - eager, heavy


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph.get(v, ()))
    return seen


def report() -> tuple[list[str], list[str]]:
    mods = modules()
    known = set(mods)
    eager, lazy, heavy = {}, {}, {}
    for name, path in mods.items():
        eager[name], lazy[name], heavy[name] = imports(name, path, known)
    lines, errors = [], []
    runtime = closure(eager, "abd_edge.runtime")
    lines.append(f"modules: {len(mods)}; the runtime imports at module level: {sorted(runtime)}")
    for m in sorted(runtime):
        if heavy[m]:
            errors.append(f"{m} (imported by abd_edge.runtime) imports {sorted(heavy[m])} at module level")
        if m.startswith(FORBIDDEN_FOR_RUNTIME):
            errors.append(f"abd_edge.runtime imports {m} at module level")
    both = {m: eager[m] | lazy[m] for m in mods}
    upward = []
    for m in sorted(mods):
        for d in sorted(both[m]):
            if LAYERS.index(layer(d)) > LAYERS.index(layer(m)):
                how = "at module level" if d in eager[m] else "inside a function"
                upward.append(f"{layer(m)} module {m} imports {layer(d)} module {d} ({how})")
    counts = {name: sum(layer(m) == name for m in mods) for name in LAYERS}
    lines.append("layers (lowest first): " + " <- ".join(f"{name} ({counts[name]} modules)" for name in LAYERS)
                 + f"; imports into a higher layer: {len(upward) or 'none'}")
    errors.extend(upward)
    cycles = strongly_connected(eager)
    lines.append(f"module-level import cycles: {cycles or 'none'}")
    lazy_cycles = strongly_connected(both)
    lines.append(f"cycles counting imports inside functions too: {lazy_cycles or 'none'}")
    for comp in lazy_cycles:
        errors.append(f"import cycle{'' if comp in cycles else ' (through imports inside functions)'}: {comp}")
    torch_free = sorted(m for m in mods if not heavy[m] and not any(heavy[d] for d in closure(eager, m)))
    lines.append(f"torch-free modules (nothing heavy at module level, transitively): {torch_free}")
    return lines, errors


def main() -> int:
    lines, errors = report()
    print("\n".join(lines))
    for e in errors:
        print("ERROR:", e)
    print("layering: OK" if not errors else f"layering: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
