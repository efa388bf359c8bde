#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install everything the
# demo and the tests need: system Qt/X libraries (when root), torch (the exact
# CPU build), the package with its Qt and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# --- system libraries for Qt under Xvfb (Debian) -------------------------------
APT_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1
 libdbus-1-3 libfontconfig1 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: warning: missing system packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
  fi
fi

# --- virtual environment ------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.napari-mitosis-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import napari_mitosis" 2>/dev/null; then
  exit 0
fi
echo "setup: installing Python packages into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# exactly this torch: a CPU build; anything newer pulls gigabytes of CUDA packages
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[qt,test,distributed,train]"
echo "$want" > "$stamp"
