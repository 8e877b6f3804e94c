"""The layout holds: imports inside ``mae`` point one way (no cycle), none sits inside a function, files stay short,
one module holds the training loop, and the core reads as the algorithm first.

Read from the source with ``ast`` (nothing is imported), so the test also covers modules that need optional packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAE = Path(__file__).resolve().parents[1] / "mae"
MAX_LINES = 500
CORE = ["config.py", "functional.py", "layers.py", "model.py"]


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


def test_training_and_evaluation_share_what_lies_below_them():
    """eval never imports train (both take what they share from mae.runtime), and runtime imports neither."""
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("mae.eval"):
            assert not {t for t in targets if t.startswith("mae.train")}, f"{name} imports {sorted(targets)}"
        if name.startswith("mae.runtime"):
            assert not {t for t in targets if t.startswith(("mae.train", "mae.eval"))}, f"{name}: {sorted(targets)}"


def test_exactly_one_module_holds_the_training_loop():
    """Accumulation groups with DDP's no_sync and the fp16 grad scaler live in one place, which every
    protocol calls."""
    def uses_loop_machinery(path: Path) -> bool:
        names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, (ast.Attribute, ast.Name))}
        return bool(names & {"no_sync", "GradScaler"})

    holders = sorted(module_name(p) for p in MAE.rglob("*.py") if uses_loop_machinery(p))
    assert holders == ["mae.runtime.loop"], holders


def test_train_is_a_few_modules_by_concept():
    entries = [p.name for p in (MAE / "train").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 13, sorted(entries)


def test_no_module_is_longer_than_500_lines():
    long = {module_name(p): n for p in MAE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
