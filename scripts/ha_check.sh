#!/usr/bin/env bash
# Issue 11 against a real Home Assistant Core: builds HA's own venv (once, outside the repo),
# then runs scripts/ha_check.py, which starts mosquitto, the door and HA and prints PASS/FAIL
# for each check. Not part of the default test run (it needs PyPI once and about a minute).
#
#   scripts/ha_check.sh                 # HA's venv in ~/.cache/maskgate/ha-venv
#   scripts/ha_check.sh --keep          # keep the work dir (logs) after a passing run
#   HA_VENV=/tmp/ha scripts/ha_check.sh
#
# Environment:
#   HA_VENV      Home Assistant's venv (default ~/.cache/maskgate/ha-venv); made if missing
#   HA_PYTHON    interpreter the venv is made from (default python3.11, else the door venv's base)
#   DOOR_PYTHON  python with the project installed (default <repo>/.venv/bin/python)
# Exit status: 0 all checks passed, 1 a check failed, 2 the set-up failed or the run was aborted.
set -euo pipefail

# 2024.3.3 is the newest Home Assistant for Python 3.11. Its acme (hass-nabucasa) breaks with
# josepy 2, and then HA's HTTP server does not start: pin josepy beside it.
HA_VERSION=2024.3.3
JOSEPY_VERSION=1.14.0

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HA_VENV=${HA_VENV:-$HOME/.cache/maskgate/ha-venv}
DOOR_PYTHON=${DOOR_PYTHON:-$REPO/.venv/bin/python}

step() { printf '==> %s\n' "$*"; }
die() {
    printf 'ha_check.sh: %s\n' "$*" >&2
    exit 2
}

step "checking the door's python and mosquitto"
[[ -x $DOOR_PYTHON ]] || die "no $DOOR_PYTHON: install the project first (./install.sh)"
"$DOOR_PYTHON" -c 'import edge, paho.mqtt' || die "$DOOR_PYTHON cannot import the project"
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] ||
    die "mosquitto is not installed (./install.sh installs it)"

ha_ready() {
    # The pinned versions are there: nothing to install.
    [[ -x $HA_VENV/bin/hass ]] && "$HA_VENV/bin/python" - "$HA_VERSION" "$JOSEPY_VERSION" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    ok = version("homeassistant") == sys.argv[1] and version("josepy") == sys.argv[2]
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if ha_ready; then
    step "Home Assistant $HA_VERSION already in $HA_VENV"
else
    if [[ ! -x $HA_VENV/bin/python ]]; then
        base=${HA_PYTHON:-}
        if [[ -z $base ]]; then
            base=$(command -v python3.11 ||
                "$DOOR_PYTHON" -c 'import sys; print(sys._base_executable)')
        fi
        # Home Assistant 2024.3 runs on Python 3.11 and 3.12 only.
        "$base" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' ||
            die "$base is Python $("$base" -V 2>&1); Home Assistant $HA_VERSION needs 3.11 or 3.12"
        step "making Home Assistant's venv $HA_VENV from $base ($("$base" -V 2>&1))"
        mkdir -p "$(dirname "$HA_VENV")"
        "$base" -m venv "$HA_VENV"
    fi
    step "installing homeassistant==$HA_VERSION josepy==$JOSEPY_VERSION (a few minutes, once)"
    "$HA_VENV/bin/python" -m pip install --quiet "homeassistant==$HA_VERSION" \
        "josepy==$JOSEPY_VERSION"
    ha_ready || die "the install did not leave homeassistant==$HA_VERSION in $HA_VENV"
fi

step "running the checks (scripts/ha_check.py)"
"$DOOR_PYTHON" "$REPO/scripts/ha_check.py" --hass "$HA_VENV/bin/hass" \
    --door-python "$DOOR_PYTHON" "$@" &
driver=$!
# The driver stops HA, the door and mosquitto on SIGTERM; a background job ignores SIGINT, so
# Ctrl-C reaches it through this trap.
trap 'kill -TERM "$driver" 2>/dev/null || true' INT TERM
rc=0
wait "$driver" || rc=$?
while kill -0 "$driver" 2>/dev/null; do # a signal ended `wait` early: let the driver clean up
    wait "$driver" || rc=$?
done
exit "$rc"
