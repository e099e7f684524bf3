"""Build nasfpn's wheel from a copy of the files git knows (tracked, and new ones not ignored).

setuptools reuses ``build/`` and ``*.egg-info`` in the checkout, which could ship stale files or
hide one missing from the package list; a fresh copy cannot. Used by ``scripts/check_wheel.sh``
(CI) and ``tests/test_package.py``.

    python scripts/build_wheel.py OUT_DIR      # prints the wheel's path
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def git_files(checkout: Path = CHECKOUT) -> list[str]:
    """The files of the work tree that git knows; ``RuntimeError`` outside a git checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=checkout, capture_output=True)
    if listed.returncode != 0:
        raise RuntimeError(f"not a git checkout: {listed.stderr.decode().strip()}")
    return [name for name in listed.stdout.decode().split("\0") if name and (checkout / name).is_file()]


def build_wheel(out: Path, checkout: Path = CHECKOUT) -> Path:
    """The wheel, built without build isolation (the running interpreter's setuptools) into ``out``."""
    with tempfile.TemporaryDirectory(prefix="nasfpn-src-") as tmp:
        source = Path(tmp)
        for name in git_files(checkout):  # tracked files deleted in the work tree are skipped
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / name, source / name)
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(source)], check=True)
    (wheel,) = out.glob("nasfpn-*.whl")
    return wheel


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(build_wheel(Path(sys.argv[1]).resolve()))
