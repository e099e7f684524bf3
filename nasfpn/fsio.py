"""Durable file writes and clear errors for damaged files.

Every file nasfpn writes that a later run reads back (configs, the controller's state, the
warm-up backbone, exported necks, converted annotations) goes through :func:`atomic_write_bytes`
and its two siblings: the data is written to a hidden temporary file in the target's folder,
flushed and fsynced, given the mode a plain ``open()`` would have given (``0o666 & ~umask``, so
teammates on shared storage can read it, not ``mkstemp``'s ``0o600``), renamed onto the target,
and the folder is fsynced. A kill or power cut at any moment leaves the old file or the new one,
never a half; a failure removes the temporary file and leaves the target untouched.

:func:`read_json` and :func:`read_yaml` turn a damaged file (truncated, not UTF-8, not the
format) into a one-line ``ValueError`` naming it, which the command line prints and exits 2 on.
A missing or unreadable file still raises the ``OSError`` ``open()`` raised.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import yaml

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "read_json", "read_yaml"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically and durably."""
    import torch  # here, so that the plain writers need no torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse the JSON file ``path``; ``what`` (e.g. "the controller state") goes into the error.

    Raises:
        ValueError: the file is damaged (truncated, empty, not UTF-8) or not JSON.
    """
    text = _read_text(path, "JSON", what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        reason = "empty file" if not text.strip() else f"{err.msg} at line {err.lineno} column {err.colno}"
        raise _damaged(path, "JSON", what, reason) from None


def read_yaml(path: str | os.PathLike, what: str | None = None) -> Any:
    """Parse the YAML file ``path`` with ``yaml.safe_load`` (an empty file gives ``None``).

    Raises:
        ValueError: the file is damaged (not UTF-8) or not YAML.
    """
    text = _read_text(path, "YAML", what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            reason += f" at line {mark.line + 1} column {mark.column + 1}"
        raise _damaged(path, "YAML", what, reason) from None


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (no window in which
    another thread creates files under umask 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (some platforms and file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_text(path: str | os.PathLike, kind: str, what: str | None) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _damaged(path, kind, what, f"not UTF-8 text (byte {err.start})") from None


def _damaged(path: str | os.PathLike, kind: str, what: str | None, reason: str) -> ValueError:
    label = f" ({what})" if what else ""
    return ValueError(f"{path}{label}: damaged or not {kind}: {reason}; restore it or remove it")
