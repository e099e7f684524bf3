"""The YAML shipped with the package (reference necks, search spaces, controller settings, search
configs) and the one-line form of a YAML error that every loader of it reports."""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only for annotations


def shipped_dir(package: str, checkout_folder: str) -> Traversable:
    """The folder of a data package that setup.cfg maps onto a top-level folder of the checkout.

    The YAML lives once, in the checkout's ``search_spaces/``, ``controllers/`` and ``configs/``
    where users browse and copy it; setup.cfg's ``package_dir`` installs those folders as the
    packages ``nasfpn.search_spaces``, ``nasfpn.controller_settings`` and ``nasfpn.search_configs``,
    so a wheel carries them and an editable install maps them. Looking them up through the import
    system finds them in both.

    Raises:
        ModuleNotFoundError: ``package`` is not installed and the checkout has no such folder
            (a wheel built without its data).
    """
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError as err:
        # A checkout imported without installing (PYTHONPATH=.) has the folder but not the
        # mapping; an installed package without it is a packaging bug and must stay loud.
        beside = Path(__file__).resolve().parent.parent / checkout_folder
        if err.name != package or not beside.is_dir():
            raise
        return beside


def yaml_stems(folder: Traversable) -> list[str]:
    """The names of the ``*.yaml`` files in a shipped folder, without the suffix.

    ``iterdir`` rather than ``glob``: a Traversable need not have ``glob``.
    """
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir()
                  if entry.name.endswith(".yaml") and entry.is_file())


def file_or_shipped(path_or_name: str | Path, folder: Traversable, what: str, names: Callable[[], Sequence[str]],
                    suffix: str = ".yaml") -> Path:
    """The file a user named: a path as given, or a bare name (no folder, no suffix) that is not
    a file here and is one of ``names()`` (the shipped ones of this kind: a folder may hold
    several kinds), found as ``<name><suffix>`` in ``folder``.

    Raises:
        ValueError: the name is neither, listing the shipped ones; or the path is no file.
    """
    path = Path(path_or_name)
    if not path.is_file() and path.suffix == "" and len(path.parts) == 1:
        shipped = names()
        if str(path_or_name) not in shipped:
            raise ValueError(f"{str(path_or_name)!r} is neither a file nor a shipped {what}; shipped: {list(shipped)}")
        return Path(str(folder / f"{path_or_name}{suffix}"))
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return path


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line: the problem and where."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or err}{where}".replace("\n", " ")


# The reference necks (``fpn.yaml``...) and the spaces (``*_space.yaml``). A Path wherever the
# package is installed on disk (a wheel, an editable install); only a zip import would differ.
REFERENCE_DIR = shipped_dir("nasfpn.search_spaces", "search_spaces")
