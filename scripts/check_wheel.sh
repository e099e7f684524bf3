#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment and run the command line from a
# folder outside the checkout. An editable install reads the checkout, so only this shows a wheel
# that lacks files (the shipped YAML once did: `nasfpn search` could not start from a wheel).
#
# Seconds, not minutes: the fresh environment borrows the dependencies already installed in
# PYTHON's environment (default .venv) through a .pth line instead of installing torch again.
# Usage: scripts/check_wheel.sh            (make check-wheel; CI runs it after make test)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$repo/.venv/bin/python}
# Absolute, since the checks run from another folder (no realpath: it would leave the venv).
case "$PYTHON" in
    /*) ;;
    */*) PYTHON="$PWD/$PYTHON" ;;
    *) PYTHON=$(command -v "$PYTHON") ;;
esac
start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/nasfpn-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

step() { echo "check-wheel [$((SECONDS - start)) s]: $*"; }

# Build from a copy of the files git knows (tracked, and new ones not ignored): setuptools reuses
# build/ and *.egg-info, so a build in the checkout could ship stale files or hide missing ones.
step "building the wheel"
wheel=$("$PYTHON" "$repo/scripts/build_wheel.py" "$work/dist")

# A fresh environment of the same interpreter (venv run from a venv uses its base Python). A plain
# path in a .pth puts PYTHON's site-packages on sys.path after the fresh one; .pth files inside it
# are not processed, so PYTHON's editable nasfpn (a .pth import hook) does not come along.
step "installing $(basename "$wheel") into a fresh environment"
"$PYTHON" -m venv --without-pip "$work/venv"
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
borrowed=$(site_of "$PYTHON")
fresh=$(site_of "$work/venv/bin/python")
echo "$borrowed" > "$fresh/borrowed-dependencies.pth"
# The fresh interpreter runs the borrowed pip (`pip --python` needs pip 22.3; Ubuntu 22.04 has 22.0).
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"

# Everything below runs outside the checkout, with a cache of its own.
mkdir "$work/run"
cd "$work/run"
export NASFPN_CACHE="$work/cache"
export PATH="$work/venv/bin:$PATH"

step "the wheel's nasfpn is the one imported, and it finds its YAML"
python - "$fresh" <<'EOF'
import sys
from pathlib import Path

import nasfpn
from nasfpn.controllers import controller_config_names
from nasfpn.genotype import reference_names
from nasfpn.search.config import search_config_names
from nasfpn.space import space_names

fresh = Path(sys.argv[1]).resolve()
imported = Path(nasfpn.__file__).resolve()
if fresh not in imported.parents:
    sys.exit(f"nasfpn was imported from {imported}, not from the fresh environment {fresh}")
shipped = {"references": reference_names(), "spaces": space_names(), "controllers": controller_config_names(),
           "configs": search_config_names()}
empty = [kind for kind, names in shipped.items() if not names]
if empty:
    sys.exit(f"the installed wheel ships no {', '.join(empty)}: {shipped}")
print(f"  {imported.parent}: {shipped}")
EOF

step "nasfpn export fpn"
nasfpn export fpn -o fpn_neck.py
test -s fpn_neck.py

step "nasfpn sample --space wide"
nasfpn sample --space wide -n 1 --width 8 --image-size 128 --out samples
test -n "$(ls samples)"

step "nasfpn search --help"
nasfpn search --help > /dev/null

step "a tiny nasfpn train on the built-in data"
printf 'data: {synthetic_images: 12}\nproxy: {head_depth: 1}\n' > tiny.yaml
nasfpn train --genotype fpn --config tiny.yaml --steps 2 --batch-size 2 --image-size 128 --width 8 \
    --warmup-steps 1 --threads 1 --json result.json > train.log || { cat train.log; exit 1; }
python -c 'import json, sys; r = json.load(open("result.json")); sys.exit(None if r["status"] == "ok" else f"train: {r}")'

step "ok in $((SECONDS - start)) s"
