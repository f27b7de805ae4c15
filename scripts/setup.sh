#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtual environment with the pinned requirements, this
# checkout installed editable into it (the `ibllm` command), and, with --browser, Debian's Chromium
# for the end-to-end browser test.
# Re-running is cheap: pip runs again only when requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-eval.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements.txt (first run: a few minutes, about 7 GB)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # pip, not uv/poetry: pip finds the local torch wheels; the others download GBs of CUDA.
    .venv/bin/python -m pip install --quiet -r requirements.txt
    # lmms-eval's own pins would downgrade PyAV and protobuf: its plugin interface needs none of them.
    .venv/bin/python -m pip install --quiet --no-deps -r requirements-eval.txt
    echo "$want" > "$stamp"
fi

# This checkout, editable: `ibllm` on the venv's PATH and `import demo` from any folder, edits live.
# --no-deps: requirements.txt pins them (above); --no-build-isolation: the pinned setuptools builds it, offline.
project_stamp=.venv/.project.sha256
want_project=$( (cat pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/ibllm ] || [ "$(cat "$project_stamp" 2>/dev/null)" != "$want_project" ]; then
    echo "[setup] installing this checkout editable (pip install -e .): the ibllm command"
    # setuptools' editable-install notices are noise on success; on failure the whole log is shown.
    if ! log=$(.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1); then
        echo "$log" >&2
        exit 1
    fi
    echo "$want_project" > "$project_stamp"
fi

# System libraries: open3d needs libusb at import time; the browser test needs Chromium.
apt_packages=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || apt_packages+=(libusb-1.0-0)
[ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ] && apt_packages+=(chromium)
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${apt_packages[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
