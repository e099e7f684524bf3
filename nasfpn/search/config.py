"""The search configuration: YAML -> one validated, typed record -> plain arguments.

Every section has defaults, the standard search: the synthetic data set, EfficientNet-Lite0 with
ImageNet weights (a warmed-up ResNet-18 without the ``pretrained`` extra), the wide space, the PPO
controller, the four reference necks first as baselines, then the confirmation. ``nasfpn search``
with no settings at all runs the shipped ``quickstart`` config over them (``configs/``, found by
name like a space or a controller; times measured in the README). Unknown keys are errors that
list the valid ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import yaml

from ..shipped import file_or_shipped, shipped_dir, yaml_problem, yaml_stems
from ..task import BackboneConfig, DataConfig
from ..train import ProxyConfig, section
from .confirm import ConfirmConfig

CONFIG_DIR = shipped_dir("nasfpn.search_configs", "configs")
QUICKSTART = "quickstart"  # what ``nasfpn search`` runs when given no settings
SECTIONS = ("data", "backbone", "proxy", "space", "controller", "search", "confirm", "scheduler", "resources", "ray",
            "reward")
MAPPING_SECTIONS = ("data", "backbone", "proxy", "search", "confirm", "scheduler", "resources", "ray", "reward")


def check_number(where: str, value: Any, *, integer: bool = False, low: float | None = None,
                 above: float | None = None, optional: bool = False) -> None:
    """One line naming the key when ``value`` is not a number of the right kind and range."""
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    wanted = ("an integer" if integer else "a number") + (f" >= {low:g}" if low is not None else "") + \
        (f" > {above:g}" if above is not None else "") + (" or null" if optional else "")
    if isinstance(value, bool) or not isinstance(value, kinds) or (low is not None and value < low) or \
            (above is not None and value <= above):
        raise ValueError(f"{where}: must be {wanted}, got {value!r}")


@dataclass(frozen=True)
class BudgetConfig:
    """How many trials before confirmation (baselines included), how many at once, how many
    proxy seeds each searched candidate gets (the mean is its reward), the controller's seed."""
    # 4 baselines + 8 searched cells, then the confirmation (see ConfirmConfig): its times on 2
    # CPU cores, float32 and bfloat16, are measured in the README (the quickstart is smaller).
    trials: int = 12
    baselines: Tuple[str, ...] = ("fpn", "panet", "bifpn", "nasfpn")
    concurrent: int = 2
    seeds: int = 1
    retries: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("trials", 1), ("concurrent", 1), ("seeds", 1), ("retries", 0), ("seed", 0)):
            check_number(f"search.{name}", getattr(self, name), integer=True, low=low)
        if not isinstance(self.baselines, tuple) or not all(isinstance(b, str) for b in self.baselines):
            raise ValueError(f"search.baselines: a list of reference names, got {self.baselines!r}")
        searched = self.trials - len(self.baselines)
        if self.seeds > 1 and searched % self.seeds:
            raise ValueError(f"search.trials: with search.seeds {self.seeds} the {searched} trials after the "
                             f"{len(self.baselines)} baselines must be a multiple of {self.seeds}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Early stopping on the AP a trial reports every ``proxy.eval_every`` steps: ``asha`` (Ray
    Tune's ASHAScheduler; a rung is one evaluation) or ``none``."""
    name: str = "asha"
    # No stop before the second evaluation (400 of 600 steps): on the built-in data the AP at
    # 200 steps ranks 21 necks (42 runs) against their final AP with Kendall's tau 0.64, at 400
    # with 0.92 (scripts/bench_fidelity.py, EfficientNet-Lite0; 0.62 and 0.88 with the warmed-up
    # ResNet-18), so a first rung at 200 would stop necks on little more than noise.
    grace_evals: int = 2
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if self.name not in ("asha", "none"):
            raise ValueError(f"scheduler.name: 'asha' or 'none', got {self.name!r}")
        check_number("scheduler.grace_evals", self.grace_evals, integer=True, low=1)
        check_number("scheduler.reduction_factor", self.reduction_factor, integer=True, low=2)


@dataclass(frozen=True)
class ResourcesConfig:
    """What each trial asks Ray for (fractions of a GPU allowed); torch threads = CPUs."""
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0

    def __post_init__(self) -> None:
        check_number("resources.cpus_per_trial", self.cpus_per_trial, above=0)
        check_number("resources.gpus_per_trial", self.gpus_per_trial, low=0)


@dataclass(frozen=True)
class RayConfig:
    """``address: null`` starts a private local Ray; ``auto`` or ``HOST:PORT`` joins a cluster."""
    address: Optional[str] = None
    num_cpus: Optional[int] = None

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, str):
            raise ValueError(f"ray.address: null, auto or HOST:PORT, got {self.address!r}")
        check_number("ray.num_cpus", self.num_cpus, integer=True, low=1, optional=True)


@dataclass(frozen=True)
class RewardConfig:
    """MnasNet's cost-aware reward, off by default: ``ap * (macs / target_macs) ** weight``."""
    target_macs: Optional[float] = None
    weight: float = -0.07

    def __post_init__(self) -> None:
        check_number("reward.target_macs", self.target_macs, above=0, optional=True)
        check_number("reward.weight", self.weight)


@dataclass(frozen=True)
class SearchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig(eval_every=200))
    space: str = "wide"
    controller: Any = "ppo"  # a name, a YAML path, or a mapping {name: ppo, <hyperparameters>}
    search: BudgetConfig = field(default_factory=BudgetConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def search_config(mapping: Mapping[str, Any] | None = None, /, **overrides: Any) -> SearchConfig:
    """Validate a configuration mapping (as from YAML); ``overrides`` are merged per section.

    Raises:
        ValueError: naming the section and key that is wrong.
    """
    data = dict(mapping or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid sections are {list(SECTIONS)}")
    for key, value in overrides.items():
        if isinstance(data.get(key), Mapping) and isinstance(value, Mapping):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    for key in MAPPING_SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise ValueError(f"{key}: must be a mapping, got {data[key]!r}")
    proxy = {"eval_every": 200, **(data.get("proxy") or {})}
    search = dict(data.get("search") or {})
    if isinstance(search.get("baselines"), (list, tuple)) or search.get("baselines", ()) is None:
        search["baselines"] = tuple(search["baselines"] or ())
    if not isinstance(data.get("space", "wide"), str):
        raise ValueError(f"space: a space name or YAML path, got {data['space']!r}")
    if not isinstance(data.get("controller", "ppo"), (str, Mapping)):
        raise ValueError(f"controller: a controller name, a YAML path or a mapping, got {data['controller']!r}")
    return SearchConfig(
        data=section(DataConfig, data.get("data"), "data"),
        backbone=section(BackboneConfig, data.get("backbone"), "backbone"),
        proxy=ProxyConfig.from_dict(proxy),
        space=data.get("space", "wide"),
        controller=data.get("controller", "ppo"),
        search=section(BudgetConfig, search, "search"),
        confirm=section(ConfirmConfig, data.get("confirm"), "confirm"),
        scheduler=section(SchedulerConfig, data.get("scheduler"), "scheduler"),
        resources=section(ResourcesConfig, data.get("resources"), "resources"),
        ray=section(RayConfig, data.get("ray"), "ray"),
        reward=section(RewardConfig, data.get("reward"), "reward"),
    )


def search_config_names() -> list[str]:
    """Names of the shipped configs (``quickstart``...)."""
    return yaml_stems(CONFIG_DIR)


def load_search_config(path_or_name: str | Path) -> dict:
    """Read a YAML configuration file, or a shipped one by name, into a mapping (validated by
    :func:`search_config`)."""
    path = file_or_shipped(path_or_name, CONFIG_DIR, "config", search_config_names)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: must be a mapping of sections {list(SECTIONS)}")
    return dict(data)


def command_line_config(config: str | Path | None, flags: Mapping[str, Any]) -> tuple[SearchConfig, bool]:
    """The search a command line asks for: ``--config`` (a file or a shipped name) with the flags
    laid over it; given neither, the quickstart. Also says whether the quickstart was chosen so.

    Raises:
        ValueError: naming the file, section or key that is wrong.
    """
    quickstart = config is None and not flags
    chosen = QUICKSTART if quickstart else config
    data = load_search_config(chosen) if chosen is not None else {}
    return search_config(merge_flags(data, **flags)), quickstart


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Command-line flags -> (section, key). Flags are plain values; ``None`` means "not given".
FLAG_KEYS = {
    "data": ("data", "annotations"), "images": ("data", "images"), "val_data": ("data", "val_annotations"),
    "val_images": ("data", "val_images"),
    "backbone": ("backbone", "name"), "backbone_weights": ("backbone", "weights"),
    "return_nodes": ("backbone", "return_nodes"), "warmup_steps": ("backbone", "warmup_steps"),
    "steps": ("proxy", "steps"), "batch_size": ("proxy", "batch_size"), "image_size": ("proxy", "image_size"),
    "width": ("proxy", "width"), "seed": ("proxy", "seed"), "threads": ("proxy", "threads"),
    "aux_loss": ("proxy", "aux_loss"), "detector": ("proxy", "detector"), "roi_extractor": ("proxy", "roi_extractor"),
    "trials": ("search", "trials"), "concurrent": ("search", "concurrent"),
    "address": ("ray", "address"), "cache_dir": ("data", "cache_dir"),
    "top": ("confirm", "top_k"), "confirm_seeds": ("confirm", "seeds"), "confirm_steps": ("confirm", "steps"),
}
SWITCHES = {  # flags that set a fixed value when on
    "no_freeze": ("backbone", "freeze", False), "no_cache": ("backbone", "cache", False),
    "no_asha": ("scheduler", "name", "none"),
}


def merge_flags(data: Mapping[str, Any] | None, **flags: Any) -> dict:
    """A configuration mapping with command-line values laid over it, section by section
    (``space`` and ``controller`` are whole values). Validate the result with
    :func:`search_config`."""
    merged = {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in (data or {}).items()}
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        if flag in ("space", "controller"):
            merged[flag] = str(value)
            continue
        if flag in SWITCHES:
            where, key, value = SWITCHES[flag]
        elif flag in FLAG_KEYS:
            where, key = FLAG_KEYS[flag]
            value = str(value.expanduser().resolve()) if isinstance(value, Path) else value
            if flag == "return_nodes" and isinstance(value, str):
                value = value.split(",")
        else:
            raise TypeError(f"merge_flags: unknown flag {flag!r}")
        section_data = merged.get(where)
        if section_data is not None and not isinstance(section_data, Mapping):
            raise ValueError(f"{where}: must be a mapping, got {section_data!r}")
        merged[where] = {**(section_data or {}), key: value}
    return merged
