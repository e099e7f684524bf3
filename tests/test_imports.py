"""The package's import graph has no circle: no module imports another that imports it back, at
module level or inside functions (imports under ``if TYPE_CHECKING:`` are annotations only and
do not count)."""
import ast
from pathlib import Path

import nasfpn

ROOT = Path(nasfpn.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node of the tree outside ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict:
    """Module -> the package's modules it imports (``from . import x`` counts as importing x)."""
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
                named = {f"{base}.{alias.name}" for alias in node.names} & paths.keys()
                found |= named or ({base} & paths.keys())
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                found |= {m for m in modules if m in paths}
        graph[name] = found - {name}
    return graph


def test_the_import_graph_is_found():
    graph = import_graph()
    assert "nasfpn.pretrained" in graph["nasfpn.backbones"]
    assert "nasfpn.neck" not in graph["nasfpn.rfp"]  # its import of Neck is under TYPE_CHECKING
    assert "nasfpn.search.ledger" in graph["nasfpn.search.driver"]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    seen, done = set(), set()

    def visit(module, trail):
        assert module not in seen or module in done, f"import circle: {' -> '.join(trail + [module])}"
        if module in done:
            return
        seen.add(module)
        for other in sorted(graph[module]):
            visit(other, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
