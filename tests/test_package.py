"""Packaging: the shipped YAML is found through the installed package, and the wheel carries it.

The YAML lives once, in the checkout's ``search_spaces/``, ``controllers/`` and ``configs/``; setup.cfg
maps them to the data packages ``nasfpn.search_spaces``, ``nasfpn.controller_settings`` and
``nasfpn.search_configs``.
Installing the wheel and running it is scripts/check_wheel.sh's job, not a test's.
"""
import importlib
import importlib.resources
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

import nasfpn
from nasfpn.controllers import CONTROLLER_DIR, controller_config_names, load_controller_config
from nasfpn.genotype import load_genotype, reference_names
from nasfpn.search.config import CONFIG_DIR, load_search_config, search_config, search_config_names
from nasfpn.shipped import REFERENCE_DIR, shipped_dir
from nasfpn.space import load_space, space_names

CHECKOUT = Path(__file__).resolve().parent.parent
# Data package -> the checkout folder setup.cfg's package_dir maps it to.
DATA_PACKAGES = {"nasfpn.search_spaces": "search_spaces", "nasfpn.controller_settings": "controllers",
                 "nasfpn.search_configs": "configs"}


def test_every_shipped_name_loads():
    assert {"bifpn", "fpn", "nasfpn", "panet"} <= set(reference_names())
    assert {"nasfpn", "wide"} <= set(space_names())
    assert {"evolution", "ppo", "random", "reinforce"} <= set(controller_config_names())
    for name in reference_names():
        load_genotype(name)
    for name in space_names():
        load_space(name)
    for name in controller_config_names():
        assert "controller" in load_controller_config(name), name
    assert "quickstart" in search_config_names()
    for name in search_config_names():
        search_config(load_search_config(name))


@pytest.mark.parametrize("package, folder", [("nasfpn.search_spaces", REFERENCE_DIR),
                                             ("nasfpn.controller_settings", CONTROLLER_DIR),
                                             ("nasfpn.search_configs", CONFIG_DIR)])
def test_the_yaml_is_found_through_the_installed_package(package, folder):
    # Not the fallback for an uninstalled checkout: the import system knows the package, and
    # the folder is where it was imported from (inside site-packages for a wheel).
    data_package = importlib.import_module(package)
    assert folder == importlib.resources.files(package)
    assert Path(str(folder)) in [Path(p) for p in data_package.__path__]
    assert data_package.__name__.rpartition(".")[0] == nasfpn.__name__


def test_an_uninstalled_checkout_falls_back_to_its_folder_and_nothing_else():
    assert shipped_dir("nasfpn.no_such_data", "search_spaces") == CHECKOUT / "search_spaces"
    with pytest.raises(ModuleNotFoundError, match="nasfpn.no_such_data"):
        shipped_dir("nasfpn.no_such_data", "no_such_folder")


def test_the_wheel_carries_the_yaml_and_every_module(tmp_path):
    wheel = _build_wheel(tmp_path)
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"nasfpn/{p.relative_to(CHECKOUT / 'nasfpn').as_posix()}"
                for p in (CHECKOUT / "nasfpn").rglob("*.py") if "__pycache__" not in p.parts}
    for package, folder in DATA_PACKAGES.items():
        installed_as = package.replace(".", "/")
        expected |= {f"{installed_as}/{p.name}" for p in (CHECKOUT / folder).glob("*.yaml")}
        expected.add(f"{installed_as}/__init__.py")
    assert sorted(expected - inside) == []  # a module missing here: add its package to setup.cfg
    assert not [name for name in inside if name.split("/")[0] in DATA_PACKAGES.values()]


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the files git knows: setuptools reuses build/, which could hide a
    file missing from the package list."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    sys.path.insert(0, str(CHECKOUT / "scripts"))
    from build_wheel import build_wheel, git_files

    try:
        git_files()
    except RuntimeError as err:
        pytest.skip(str(err))
    return build_wheel(tmp_path / "dist")


def test_no_module_imports_itself_back():
    """Every import of one nasfpn module by another, at module level or inside a function, as
    a graph: it has no circle. Imports under ``if TYPE_CHECKING:`` never run and do not count."""
    graph = _import_graph()
    seen, done, circles = set(), set(), set()

    def visit(module: str, trail: list[str]) -> None:
        if module in seen and module not in done:
            circles.add(tuple(trail[trail.index(module):] + [module]))
        if module in seen:
            return
        seen.add(module)
        for other in sorted(graph[module]):
            visit(other, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, [" -> ".join(circle) for circle in circles]
    assert graph["nasfpn.canonical"] == {"nasfpn.vocabulary"}  # the hash reads the genotype it is given


def _import_graph() -> dict[str, set[str]]:
    """Module -> the nasfpn modules it imports (``from . import ops`` names the module ops)."""
    import ast

    modules = {}
    for path in sorted((CHECKOUT / "nasfpn").rglob("*.py")):
        parts = path.relative_to(CHECKOUT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        for_annotations = {id(inner) for node in ast.walk(tree)
                           if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                           for inner in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in for_annotations:
                continue
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph
