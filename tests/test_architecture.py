"""The import structure the docs promise (docs/architecture.md): no circles, imports that point one way, the
registry a leaf, and function-local imports only where a comment says why (optional or slow dependencies).

Read from the source with `ast`, function-local imports included, so a lazy import cannot hide a circle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "models", "tasks", "kernels")
# What each package may import of the project (besides itself).
ALLOWED = {
    "kernels": set(),
    "models": {"kernels", "harness.registry", "harness.errors"},
    "tasks": {"harness.registry", "harness.errors"},
    "harness": {"harness", "models", "tasks", "kernels"},
}
LEAVES = {"harness.registry": {"harness.errors"}, "harness.errors": set()}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


MODULES = project_modules()


def imports_of(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, whether the import is inside a function) of one module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from a import b` imports the module a.b when there is one, else names of a
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                    for alias in child.names
                ]
            else:
                visit(child, inside)
                continue
            for target in targets:
                while target and target not in MODULES:  # `import harness.run.cell` reaches harness.run.cell
                    target = target.rpartition(".")[0]
                if target and target.split(".")[0] in PACKAGES:
                    found.append((target, child.lineno, in_function))

    visit(tree, False)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_circles():
    edges = {name: {target for target, _, _ in found if target != name} for name, found in GRAPH.items()}
    # package __init__ modules that only document (import nothing) would otherwise join circles through their parent
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def strongconnect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in edges:
        if node not in index:
            strongconnect(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    wrong = []
    for name, found in GRAPH.items():
        if name.split(".")[0] != package:
            continue
        allowed = LEAVES.get(name, ALLOWED[package])
        for target, line, _ in found:
            top = target.split(".")[0]
            own = top == package and name not in LEAVES
            if not own and not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_function_local_imports_say_why():
    """A function-local import is for an optional or slow dependency, and a comment on its line or the line
    above says which (cli.py's module docstring says it for all of its commands)."""
    silent = []
    for name, path in MODULES.items():
        if name == "harness.cli":
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Import | ast.ImportFrom) and not _explained(lines, child.lineno - 1):
                    silent.append(
                        f"{path.relative_to(ROOT)}:{child.lineno}: {lines[child.lineno - 1].strip()}"
                    )
    assert not silent, "function-local imports without a reason:\n" + "\n".join(sorted(set(silent)))


def _explained(lines: list[str], index: int) -> bool:
    """The import at lines[index] has a comment on its line, or above the block of imports it belongs to."""
    if "#" in lines[index]:
        return True
    while index > 0 and lines[index - 1].strip().startswith(("import ", "from ")):
        index -= 1
        if "#" in lines[index]:
            return True
    return index > 0 and "#" in lines[index - 1]


def test_the_registry_models_and_tasks_import_without_transformers():
    code = (
        "import sys, harness.registry, models, models.presets, tasks; "
        "heavy = [m for m in ('transformers', 'lm_eval', 'datasets', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
