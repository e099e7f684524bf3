"""Small helpers of the controllers: validated settings, plain-data random states and genotypes."""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

from ..genotype import Genotype


def genotype_to_plain(genotype: Genotype) -> dict[str, Any]:
    """``genotype.to_dict()`` with output levels keyed ``P3``..: survives JSON unchanged."""
    data = genotype.to_dict()
    data["outputs"] = {f"P{level}": name for level, name in data["outputs"].items()}
    return data


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from_state(state: Sequence[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)


def check_int(name: str, value: Any, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"{name} must be an integer{'' if low is None else f' >= {low}'}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = ([f"{'>' if open_low else '>='} {low}"] if low is not None else []) + \
                 ([f"<= {high}"] if high is not None else [])
        raise ValueError(f"{name} must be a number{' ' if bounds else ''}{' and '.join(bounds)}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
