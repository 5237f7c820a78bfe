"""The lock files install.sh installs from (requirements/*.lock, made by scripts/lock.sh): every
dependency of pyproject.toml pinned within its range with hashes, markers kept, the dev lock in
step with the daemon's, and this venv installed from it."""

from __future__ import annotations

import platform
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(name: str) -> dict[str, list[tuple[str, str | None, int]]]:
    """{package: [(version, marker, hashes)]} of requirements/<name>."""
    out: dict[str, list[tuple[str, str | None, int]]] = {}
    current = None
    for line in (ROOT / "requirements" / name).read_text(encoding="utf-8").splitlines():
        m = PIN.match(line)
        if m:
            current = [m.group(2), m.group(3), 0]
            out.setdefault(canonicalize_name(m.group(1)), []).append(current)  # type: ignore[arg-type]
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            current[2] += 1
    return {k: [tuple(v) for v in vs] for k, vs in out.items()}  # type: ignore[misc]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.mark.parametrize("lock", ["daemon.lock", "dev.lock"])
def test_every_pin_carries_hashes(lock: str) -> None:
    locked = pins(lock)
    assert len(locked) > 20
    for name, entries in locked.items():
        for ver, _, hashes in entries:
            assert hashes >= 1, f"{lock}: {name}=={ver} has no hash"


def test_daemon_lock_pins_every_dependency_within_its_range() -> None:
    locked = pins("daemon.lock")
    for spec in project()["dependencies"]:
        req = Requirement(spec)
        entries = locked.get(canonicalize_name(req.name))
        assert entries, f"{req.name} is not in requirements/daemon.lock: run scripts/lock.sh"
        for ver, marker, _ in entries:
            assert req.specifier.contains(ver, prereleases=True), f"{req.name}=={ver} vs {spec}"
            if req.marker is not None:  # gpiod, systemd-python: Linux only
                assert marker and "sys_platform == 'linux'" in marker, (req.name, marker)
    # Several CPU architectures: the ONNX Runtime pin carries a hash per wheel, not one.
    assert all(h >= 4 for _, _, h in locked["onnxruntime"])


def test_dev_lock_adds_the_dev_extra_and_keeps_the_daemon_pins() -> None:
    daemon, dev = pins("daemon.lock"), pins("dev.lock")
    for spec in project()["dependencies"] + project()["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        assert canonicalize_name(req.name) in dev, f"{req.name} is not in requirements/dev.lock"
    for name, entries in dev.items():
        if name in daemon:
            (ver, _, _), allowed = entries[0], {v for v, _, _ in daemon[name]}
            assert ver in allowed, f"dev.lock {name}=={ver}, daemon.lock {sorted(allowed)}"
    # The kit's torch is the CPU build: a plain pin would be the multi-GB CUDA one.
    assert dev["torch"][0][0].endswith("+cpu")


@pytest.mark.skipif(
    platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11),
    reason="requirements/dev.lock is for Linux x86_64, CPython 3.11",
)
def test_this_venv_is_installed_from_the_dev_lock() -> None:
    stale = []
    for name, [(ver, _, _)] in pins("dev.lock").items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have != ver:
            stale.append(f"{name} {have} (locked {ver})")
    assert not stale, f"run ./install.sh --dev: {', '.join(stale)}"
