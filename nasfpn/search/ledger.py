"""The ledger: the experiment folder's record of every finished trial, and its source of truth.

The driver appends one JSON line per finished trial the moment it hears of it, then flushes and
fsyncs, so a search killed at any moment keeps every trial it finished. Tune's own state is
saved only every few seconds; on resume the ledger, not Tune, says what is done, and a genotype
already in it is answered from it, never trained again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

log = logging.getLogger(__name__)


class Ledger:
    """Append-only JSON lines; a torn last line (a kill mid-write) is ignored on reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: List[Dict[str, Any]] = []
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    self.entries.append(json.loads(line))
                except json.JSONDecodeError:
                    if number == len(lines):
                        log.warning("%s: ignoring a torn last line (the search was killed while writing it)", self.path)
                    else:
                        raise ValueError(f"{self.path}: line {number} is not JSON") from None

    def append(self, entry: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=_plain) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.entries)

    def find(self, genotype_hash: str, trained_hash: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The last finished (not failed) entry of a topology, or of another genotype whose proxy
        trained the same neck (``trained_hash``: e.g. a cell of the wide space, 2 repeats, and
        the FPN baseline, 1, are one network once the proxy caps repeats at 1), if any."""
        for entry in reversed(self.entries):
            same = entry["hash"] == genotype_hash or (trained_hash is not None and entry.get("trained_hash") == trained_hash)
            if same and entry["status"] != "failed":
                return entry
        return None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
