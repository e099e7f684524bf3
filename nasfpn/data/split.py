"""A deterministic train/validation split of one annotation file's images."""
from __future__ import annotations

import random
from typing import Sequence


def split_ids(image_ids: Sequence[int], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split image ids into (train, validation), both sorted.

    The ids are sorted, shuffled with ``random.Random(seed)``, and the first
    ``round(len * val_fraction)`` (at least 1, at most ``len - 1``) go to validation: the same ids,
    fraction and seed always give the same split, whatever the order the ids came in.

    Raises:
        ValueError: fewer than two images, a repeated id, or ``val_fraction`` outside (0, 1).
    """
    ids = sorted(int(i) for i in image_ids)
    if len(set(ids)) != len(ids):
        repeated = next(a for a, b in zip(ids, ids[1:]) if a == b)
        raise ValueError(f"image id {repeated} is repeated")
    if len(ids) < 2:
        raise ValueError(f"a train/validation split needs at least 2 images, got {len(ids)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = min(max(round(len(ids) * val_fraction), 1), len(ids) - 1)
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])
