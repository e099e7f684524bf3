"""Controller settings files: ``controllers/<name>.yaml`` (a ``controller:`` key naming the
algorithm, then its settings). Installed as the data package ``nasfpn.controller_settings``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from ..shipped import file_or_shipped, shipped_dir, yaml_problem, yaml_stems

CONTROLLER_DIR = shipped_dir("nasfpn.controller_settings", "controllers")


def controller_config_names() -> list[str]:
    """Names of the shipped settings files (``ppo``, ``evolution``...)."""
    return yaml_stems(CONTROLLER_DIR)


def load_controller_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A settings mapping as is, or read from a YAML file or a shipped name.

    Raises:
        ValueError: the file is missing, not YAML, or not a mapping.
    """
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, Path)):
        raise ValueError(f"controller config must be a mapping, a YAML path or a name, got {config!r}")
    path = file_or_shipped(config, CONTROLLER_DIR, "controller config", controller_config_names)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a controller config must be a mapping, got {type(data).__name__}")
    return dict(data)
