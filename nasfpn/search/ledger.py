"""The ledger: the experiment folder's record of every finished trial, and its source of truth.

The driver appends one JSON line (a :class:`~nasfpn.search.records.TrialRecord`) per finished
trial the moment it hears of it, then flushes and fsyncs, so a search killed at any moment keeps
every trial it finished. Tune's own state is saved only every few seconds; on resume the ledger,
not Tune, says what is done, and a trial key already in it is answered from it, never trained
again.

A driver killed while appending leaves a last line without its newline. Reading skips it; the
first append truncates the file back to its last complete line (saying so once), so the next
line never lands on the fragment's line.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .records import Key, TrialRecord

log = logging.getLogger(__name__)


class Ledger:
    """Append-only JSON lines of :class:`TrialRecord`; ``find`` answers by trial key."""

    def __init__(self, path: str | Path, *, default_seed: int = 0):
        self.path = Path(path)
        self.records: List[TrialRecord] = []
        self._by_key: Dict[Key, List[TrialRecord]] = {}  # records that did not fail
        self._torn_at: Optional[int] = None  # byte offset of a torn last line, cut before the next append
        if self.path.is_file():
            self._read(default_seed)

    def _read(self, default_seed: int) -> None:
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
        if complete < len(data):
            self._torn_at = complete
            log.warning("%s: a torn last line (the driver was killed while writing it) is ignored and will be "
                        "removed before the next trial is written", self.path)
        for number, line in enumerate(data[:complete].decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = TrialRecord.from_json(json.loads(line), default_seed)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{self.path}: line {number} is not a trial record ({err}); the ledger is damaged "
                                 "(it is only ever appended to: restore it from a backup or remove that line)") from None
            self._add(record)

    def _add(self, record: TrialRecord) -> None:
        self.records.append(record)
        if record.status != "failed":
            self._by_key.setdefault(record.key, []).append(record)

    def append(self, record: TrialRecord) -> None:
        """Write ``record`` as one line, flushed and fsynced before this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if self._torn_at is not None:
                f.truncate(self._torn_at)
                log.warning("%s: removed the torn last line", self.path)
                self._torn_at = None
            f.write((json.dumps(record.to_json()) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self._add(record)

    def next_trial(self) -> int:
        return len(self.records) + 1

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TrialRecord]:
        return iter(self.records)

    def find(self, key: Key, *, full: bool = False) -> Optional[TrialRecord]:
        """The last record of a trial key that did not fail (with ``full``: that ran its whole
        recipe, not stopped early by the scheduler), if any."""
        for record in reversed(self._by_key.get(key, ())):
            if not full or record.status == "ok":
                return record
        return None

    def of_recipe(self, recipe: str) -> List[TrialRecord]:
        return [r for r in self.records if r.candidate.recipe == recipe]
