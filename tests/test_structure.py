"""The layout holds: imports inside ``mae`` point one way (no cycle), none sits inside a function, files stay short.

Read from the source with ``ast`` (nothing is imported), so the test also covers modules that need optional packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAE = Path(__file__).resolve().parents[1] / "mae"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(MAE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def mae_imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported mae module, inside a function?)`` for every import of a ``mae`` module in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never executed
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")
                if child.level:
                    base = base[: len(base) - (child.level - 1)]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module or ""
                # "from . import functional" imports a module; "from .config import X" the module config
                targets = [f"{stem}.{a.name}" if child.module is None else stem for a in child.names]
            found.extend((t, in_function) for t in targets if t == "mae" or t.startswith("mae."))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in MAE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target, _ in mae_imports(path):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]  # "from .config import X" names the module config
            if target != name and target in modules and not name.startswith(target + ".") and target != "mae":
                targets.add(target)
        edges[name] = targets
    return edges


def test_no_mae_import_inside_a_function():
    inside = [(module_name(p), t) for p in MAE.rglob("*.py") for t, in_fn in mae_imports(p) if in_fn]
    assert not inside, f"function-local imports between mae modules: {inside}"


def test_imports_inside_mae_have_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])


def test_the_core_points_one_way():
    edges = graph()
    order = ["mae._checks", "mae.config", "mae.functional", "mae.layers", "mae.model"]
    for i, low in enumerate(order):
        above = set(order[i + 1:]) | {m for m in edges if m.startswith(("mae.io", "mae.train", "mae.eval"))}
        assert not edges[low] & above, f"{low} imports {sorted(edges[low] & above)}, which sit above it"


def test_no_module_is_longer_than_400_lines():
    long = {module_name(p): n for p in MAE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
