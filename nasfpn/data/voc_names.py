"""Class names of a VOC conversion: the categories to write, and likely typos among the names.

Names are compared as :mod:`nasfpn.data.voc` writes them (stripped). Likely typos are reported,
never fixed: names that differ only by case, or by at most ``NEAR_EDITS`` edits where that is
under a third of the shorter name (``kangaro``/``kangaroo``, not ``RBC``/``WBC``), and a class of
fewer than ``RARE_BOXES`` boxes that is also at most ``RARE_SHARE`` of all boxes (one box among
300, not a small class of a small set).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence

from .coco import DatasetError

NEAR_EDITS, RARE_BOXES, RARE_SHARE = 2, 5, 0.01


def category_names(classes: Sequence[str] | None, boxes_of: dict, ann_dir: Path, notes: list[str]) -> list[str]:
    """The categories in label order: ``classes`` (stripped; an error if none has a box, a note
    naming those never seen), else every name with a box, sorted. ``boxes_of``: name -> files."""
    if classes is None:
        if not boxes_of:
            raise DatasetError(f"{ann_dir}: no <object> with a box in any of the XML files")
        return sorted(boxes_of)
    names = [c.strip() for c in classes]
    if len(set(names)) != len(names) or not names or "" in names:
        raise DatasetError(f"classes must be distinct and not empty, got {list(classes)}")
    unseen = [name for name in names if name not in boxes_of]
    found = ", ".join(_described(name, boxes_of, False) for name in _by_boxes(boxes_of)[:10])
    if len(unseen) == len(names):
        raise DatasetError(f"none of the classes given has a box: {_guesses(unseen, boxes_of)}; "
                           f"the XML files have {found}")
    if unseen:
        notes.append(f"class(es) given but never seen in the XML files: {_guesses(unseen, boxes_of)}")
    return names


def _guesses(unseen: list[str], boxes_of: dict) -> str:
    """``'kangaroos' (did you mean 'kangaroo'?), 'emu'``."""
    def one(name: str) -> str:
        close = difflib.get_close_matches(name, list(boxes_of), n=1)
        return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    return ", ".join(one(name) for name in unseen)


def class_warnings(boxes_of: dict[str, list[str]]) -> list[str]:
    """Likely typos among the class names (see the module docstring); the rarer name of a pair is named first."""
    total = sum(len(files) for files in boxes_of.values())
    names = _by_boxes(boxes_of)
    warnings, flagged = [], set()
    for i, name in enumerate(names):
        for common in names[:i]:  # the likest name with more boxes; one warning per name
            how = _likeness(name, common)
            if how:
                warnings.append(f"class {_described(name, boxes_of)} {how} {_described(common, boxes_of, False)}; "
                                "a typo?")
                flagged |= {name, common}
                break
    for name in names:
        n = len(boxes_of[name])
        if name not in flagged and n < RARE_BOXES and n <= RARE_SHARE * total:
            warnings.append(f"class {_described(name, boxes_of)} has only {n} of the {total} boxes; a typo?")
    return warnings


def _likeness(a: str, b: str) -> str | None:
    if a.casefold() == b.casefold():
        return "differs only by case from"
    edits = _edit_distance(a.casefold(), b.casefold())
    if edits <= NEAR_EDITS and 3 * edits < min(len(a), len(b)):
        return f"is {edits} edit{'s' if edits > 1 else ''} from"
    return None


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _by_boxes(boxes_of: dict[str, list[str]]) -> list[str]:
    return sorted(boxes_of, key=lambda name: (-len(boxes_of[name]), name))


def _described(name: str, boxes_of: dict[str, list[str]], with_files: bool = True) -> str:
    """``'kangaro' (1 box, in k7.xml)``: where to look for the typo."""
    n, files = len(boxes_of[name]), list(dict.fromkeys(boxes_of[name]))
    where = f", in {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" if with_files else ""
    return f"{name!r} ({n} box{'es' if n != 1 else ''}{where})"
