import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasfpn.search.lock import LOCK_NAME, FolderLock, FolderLocked

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from nasfpn.search.lock import FolderLock
FolderLock(sys.argv[1], command=["nasfpn", "search", "--out", sys.argv[1]]).acquire()
Path(sys.argv[2]).write_text("ready")
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that takes the lock on tmp_path/run and sleeps; killed at the end."""
    folder, ready = tmp_path / "run", tmp_path / "ready"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"the holder process ended: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the holder process did not take the lock within 60 s")
            time.sleep(0.05)
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_other_process_holds_then_dies(holder, caplog):
    folder, proc = holder
    with pytest.raises(FolderLocked) as err:
        FolderLock(folder).acquire()
    message = str(err.value)
    assert f"pid {proc.pid}" in message and f"host {socket.gethostname()}" in message
    assert str(folder) in message and "in use by another nasfpn driver" in message
    assert isinstance(err.value, ValueError)  # the command line prints it and exits 2

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="nasfpn.search.lock"):
        with FolderLock(folder) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    stale = [r for r in caplog.records if "stale lock" in r.getMessage()]
    assert len(stale) == 1 and f"pid {proc.pid}" in stale[0].getMessage()


def test_record_release_and_reacquire(tmp_path, caplog):
    lock = FolderLock(tmp_path, command=["nasfpn", "search"])
    with caplog.at_level(logging.WARNING):
        lock.acquire()
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] == "nasfpn search" and record["since"]
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path).acquire()  # a second lock in the same process is refused too
        lock.release()
        assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean release: nothing stale
        lock.release()  # no-op
        with lock:
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RuntimeError):
            with lock:
                lock.acquire()
    assert not caplog.records  # no stale warning after clean releases


def test_unknown_holder_and_dead_pid_that_still_holds(tmp_path):
    path = tmp_path / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT)  # hold the lock the way a foreign process would
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderLocked, match="unknown holder"):
            FolderLock(tmp_path).acquire()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
        with pytest.raises(FolderLocked, match="no longer running here"):
            FolderLock(tmp_path).acquire()
    finally:
        os.close(fd)


def test_garbage_lock_file_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text('{"host": "a", "pi')  # torn by a crash
    with caplog.at_level(logging.WARNING, logger="nasfpn.search.lock"):
        with FolderLock(tmp_path):
            pass
    assert any("stale lock of unknown holder" in r.getMessage() for r in caplog.records)
