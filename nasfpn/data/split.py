"""A deterministic train/validation split of one annotation file's images, and a deterministic,
class-balanced subset of a split (the proxy's data on a large set, ``data.max_train_images``)."""
from __future__ import annotations

import random
from collections import deque
from typing import Iterable, Mapping, Optional, Sequence


# data.val_fraction when the user gives none: 0.2 of a set large enough; on a smaller one raised
# until validation holds about VAL_IMAGES images, never above MAX_VAL_FRACTION. A proxy's AP on a
# few dozen images is mostly seed noise. Measured on bccd (364 images, 21 necks, 2 seeds each,
# scripts/bench_fidelity.py): 73 validation images (0.2) rank necks with a seed-to-seed Kendall tau
# of 0.54 and a seed std of 0.0087 AP; 146 (0.4) with 0.76 and 0.0050, the reference necks then
# spanning 8.0 seed stds instead of 4.5.
VAL_FRACTION = 0.2
VAL_IMAGES = 150
MAX_VAL_FRACTION = 0.4
# Below this many validation images a search says, before it starts and in its leaderboard, that
# the split is too small to rank necks (seen: 20 images, FPN 0.095 with seed 0 and 0.161 with seed 1).
MIN_VAL_IMAGES = 100


def default_val_fraction(images: int) -> float:
    """The share held out for validation when ``data.val_fraction`` is not given (see above)."""
    return min(max(VAL_FRACTION, VAL_IMAGES / max(images, 1)), MAX_VAL_FRACTION)


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


def subset_ids(image_classes: Mapping[int, Iterable[int]], count: Optional[int], seed: int = 0) -> list[int]:
    """``count`` of the images, balanced over classes, sorted; all of them when ``count`` is None
    or not smaller than their number.

    NAS-FPN's proxy searched on a fixed part of COCO; here the part is chosen round-robin: each
    class in turn (the rarest first, so that a small ``count`` still reaches the rare classes)
    takes its next image not yet chosen, its images in an order shuffled by
    ``random.Random(seed)``, until ``count`` are chosen. Every class keeps
    ``min(its images, count // classes)`` images or more (a random subset of COCO's size would
    leave a rare class next to nothing). Images with no box come last, only when the images with
    boxes are fewer than ``count``: they teach the proxy only background, which every image has.

    Args:
        image_classes: image id -> the classes of its boxes (empty: no box).
        count: how many images; None: all.
        seed: the same ids, classes, count and seed always give the same subset.

    Raises:
        ValueError: ``count`` not a positive integer.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"a subset size must be a positive integer, got {count!r}")
    classes = {int(i): sorted(set(c)) for i, c in image_classes.items()}
    ids = sorted(classes)
    if count is None or count >= len(ids):
        return ids
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for image_id in ids:
        for cls in classes[image_id]:
            members.setdefault(cls, []).append(image_id)
    turns: deque[deque[int]] = deque()
    for cls in sorted(members, key=lambda c: (len(members[c]), c)):
        rng.shuffle(members[cls])
        turns.append(deque(members[cls]))
    chosen: set[int] = set()
    while turns and len(chosen) < count:
        queue = turns.popleft()
        while queue and queue[0] in chosen:  # taken already in another class's turn
            queue.popleft()
        if queue:
            chosen.add(queue.popleft())
            turns.append(queue)
    empty = [i for i in ids if not classes[i]]
    rng.shuffle(empty)
    chosen.update(empty[:count - len(chosen)])
    return sorted(chosen)
