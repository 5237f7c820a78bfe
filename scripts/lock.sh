#!/usr/bin/env bash
# Regenerates the hashed lock files that install.sh installs from, with uv in a throwaway venv:
#   scripts/lock.sh            re-resolve pyproject.toml, keeping today's pins where still allowed
#   scripts/lock.sh --upgrade  move every pin to the newest release pyproject.toml allows
# requirements/daemon.lock: the daemon's dependencies for CPython >= 3.10 on every platform
#   (one resolution, forked by environment markers where a version differs, e.g. Python 3.10),
#   with a hash for every file the index offers for each pinned version (x86_64 and aarch64
#   wheels, sdists).
# requirements/dev.lock: the same pins plus the dev extra (pytest, hypothesis, ruff and the model
#   kit's CPU torch) for the development and CI machines: Linux x86_64, CPython 3.11.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

UV_VERSION=0.13.9
UPGRADE=()
for arg in "$@"; do
    case "$arg" in
        --upgrade) UPGRADE=(--upgrade) ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "lock.sh: unknown option '$arg'" >&2; exit 2 ;;
    esac
done

TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/maskgate/lock-tools"
if ! "$TOOLS/bin/uv" --version 2>/dev/null | grep -q "^uv $UV_VERSION"; then
    python3 -m venv --clear "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"

# uv does not read pip's configuration: hand it pip's find-links (where the CPU build of torch
# lies on these machines). The index is the default one, as for pip.
FIND_LINKS=()
for fl in $(python3 -m pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
    FIND_LINKS+=(--find-links "$fl")
done

COMMON=(--generate-hashes --custom-compile-command "scripts/lock.sh" --quiet "${UPGRADE[@]}"
        "${FIND_LINKS[@]}")
"$UV" pip compile pyproject.toml --universal --python-version 3.10 "${COMMON[@]}" \
    -c requirements/lock-constraints.txt -o requirements/daemon.lock
"$UV" pip compile pyproject.toml --extra dev --python-platform x86_64-manylinux_2_28 \
    --python-version 3.11 -c requirements/daemon.lock "${COMMON[@]}" -o requirements/dev.lock

# A plain torch pin resolves to the multi-GB CUDA build: the kit wants the CPU one.
grep -q '^torch==.*+cpu' requirements/dev.lock || {
    echo "lock.sh: requirements/dev.lock pins a torch without +cpu: put the CPU wheels of" \
         "torch on pip's find-links and run again" >&2
    exit 1
}
echo "wrote requirements/daemon.lock ($(grep -c '^[a-z]' requirements/daemon.lock) pins)" \
     "and requirements/dev.lock ($(grep -c '^[a-z]' requirements/dev.lock) pins)"
