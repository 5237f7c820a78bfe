"""The door as systemd runs it: `python -m edge run` in its own process, for tests.

    from service import DoorProcess      # inside tests/

`DoorProcess(config, workdir)` writes the config as a file, gives the process a notify socket
(as systemd's Type=notify does) and collects what it sends there (READY=1, WATCHDOG=1, ...)
with the time each arrived, keeps its stderr in a file, and can stop it with any signal. The
mock relay's edge log and its peak memory (VmHWM) are read from outside, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class DoorProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "config.yaml"
        self.config_file.write_text(json.dumps(config))  # JSON is YAML
        self.stderr_file = workdir / "stderr.log"
        self.extra_env = env or {}
        self.notes: list[tuple[float, str]] = []  # (time.monotonic(), message)
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._starts = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> DoorProcess:
        assert self.proc is None or self.proc.poll() is not None, "the door is still running"
        self._starts += 1
        sock_path = self.workdir / f"notify-{self._starts}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.2)
        self.notes = []
        env = os.environ | {"NOTIFY_SOCKET": str(sock_path), "INVOCATION_ID": "test"}
        env |= self.extra_env
        with self.stderr_file.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "-c", str(self.config_file), "run"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._reader = threading.Thread(target=self._read, args=(self._sock,), daemon=True)
        self._reader.start()
        return self

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                if self.proc is None or self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            self.notes.append((time.monotonic(), data.decode()))

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for READY=1; returns when it arrived (monotonic). AssertionError if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, note in list(self.notes):
                if "READY=1" in note.split("\n"):
                    return t
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"door exited with {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"no READY=1 within {timeout} s:\n{self.stderr()}")

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the process to end; returns its exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._close_socket()
        return code

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._close_socket()
        return code

    def _close_socket(self) -> None:
        if self._reader is not None:
            self._reader.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_socket()

    def __enter__(self) -> DoorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what an operator sees ----------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    def notified(self, message: str) -> bool:
        return any(message in note.split("\n") for _, note in self.notes)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


def relay_pulses(state_dir: Path) -> list[dict[str, Any]]:
    """The mock relay's unlocking edges, from its edge log."""
    log = state_dir / "relay.jsonl"
    edges = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [e for e in edges if e["level"] == 1]


def run_relay_safe(config_file: Path) -> None:
    """What the unit's ExecStopPost= does after every stop, SIGKILL included."""
    subprocess.run(
        [sys.executable, "-m", "edge", "-c", str(config_file), "relay-safe"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )


__all__ = ["DoorProcess", "relay_pulses", "run_relay_safe", "signal"]
