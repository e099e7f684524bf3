"""One driver per experiment folder: ``with FolderLock(folder): ...`` (the caller creates the folder).

The lock is ``fcntl.flock`` on ``<folder>/.driver.lock``. The kernel drops it when the holder's
last descriptor closes, so a killed driver (``kill -9``, OOM) leaves no lock behind: the next
driver takes it and logs that it took over a stale one. While held, the file says who holds it
(``{"host", "pid", "since", "command"}``), which is what makes the refusal useful; a clean
release empties it. The descriptor is not inherited across ``exec`` (PEP 446), but a child
made by a plain ``fork`` keeps the lock until it exits. On NFS, whether ``flock`` excludes
drivers on *other* hosts depends on the mount (Linux maps it to NFS byte-range locks;
``local_lock=flock`` or ``nolock`` make it local to each host): there, keep to one driver per
folder across machines by arrangement.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)
LOCK_NAME = ".driver.lock"


class FolderLocked(ValueError):
    """Another process holds the folder's lock."""


class FolderLock:
    """Exclusive, non-blocking lock on an existing experiment ``folder``, recording ``command``
    (default ``sys.argv``); :meth:`acquire` raises :class:`FolderLocked` naming the holder."""

    def __init__(self, folder: str | os.PathLike, command: Optional[Sequence[str]] = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = shlex.join(command if command is not None else sys.argv)[:200]
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # EWOULDBLOCK: someone holds it
                raise FolderLocked(self._refusal(_read_holder(fd))) from None
            if (previous := _read_holder(fd)) is not None:  # its holder died without releasing it
                log.warning("%s: took over the stale lock of %s", self.folder, _describe(previous))
            info = {"host": socket.gethostname(), "pid": os.getpid(),
                    "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock; no-op when not held. The file stays:
        removing it would let two drivers lock two different files of the same name."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FolderLock({str(self.folder)!r}, held={self._fd is not None})"

    def _refusal(self, holder: Optional[dict]) -> str:
        message = (f"{self.folder} is in use by another nasfpn driver ({_describe(holder)}); "
                   "wait for it to finish or stop it first")
        if holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            message += (f" (pid {holder.get('pid')} is no longer running here, yet the lock is held:"
                        " by a process it forked, or this file system's locks are unreliable)")
        return message


def _read_holder(fd: int) -> Optional[dict]:
    """The holder record; ``None`` when the file is empty (released cleanly), ``{}`` if unreadable."""
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return {}
    return holder if holder is None or isinstance(holder, dict) else {}


def _describe(holder: Optional[dict]) -> str:
    if not holder or not {"host", "pid", "since"} <= holder.keys():
        return "unknown holder"
    return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"


def _alive(pid) -> bool:
    """False only when ``pid`` surely names no process on this host."""
    try:
        os.kill(pid, 0)  # raises PermissionError for someone else's live process
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError, OverflowError):
        pass
    return True
