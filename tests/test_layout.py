"""Dependency rules of the house, checked on the real import graph."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_edge_never_imports_torch() -> None:
    # Import every edge module in a fresh interpreter, then look at what got loaded.
    modules = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))\n"
        "print(len(sys.modules)); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr or "torch was imported by edge/"
    assert len(modules) > 20


def test_vision_knows_nothing_of_mqtt_or_relays() -> None:
    for path in (REPO_ROOT / "edge" / "vision").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for word in ("paho", "edge.mqtt", "edge.relay", "edge.store", "gpiod"):
            assert word not in text, f"{path.name} mentions {word}"


def test_console_script_is_declared() -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'maskgate = "edge.__main__:main"' in text


def test_mqtt_store_and_relay_know_nothing_of_each_other() -> None:
    # The door (daemon.py, request_handlers.py, opener.py) wires them; they stay apart.
    parts = {"mqtt": "edge.mqtt", "store": "edge.store", "relay": "edge.relay"}
    for part, own in parts.items():
        for path in (REPO_ROOT / "edge" / part).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for other in set(parts.values()) - {own}:
                assert f"from {other}" not in text and f"import {other}" not in text, (
                    f"{path.relative_to(REPO_ROOT)} imports {other}"
                )


def test_edge_never_imports_fleet() -> None:
    # The fleet uses the door's code; the door must run without the fleet installed.
    for path in (REPO_ROOT / "edge").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in ("import fleet", "from fleet"):
            assert needle not in text, f"{path.relative_to(REPO_ROOT)} imports fleet"
    modules = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "sys.exit(1 if any(k == 'fleet' or k.startswith('fleet.') for k in sys.modules) else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr or "fleet was imported by edge/"


def test_fleet_console_script_and_package_are_declared() -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'maskgate-fleet = "fleet.cli:main"' in text
    assert '"fleet*"' in text
    assert (REPO_ROOT / "systemd" / "maskgate-fleet.service").is_file()
