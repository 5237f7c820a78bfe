"""A mosquitto process of our own on a free loopback port (the demo's broker, the tests' base).

Only for a machine with `mosquitto` installed (install.sh installs it); never used by a door
that has a broker configured.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class BrokerError(RuntimeError):
    pass


class LocalBroker:
    """mosquitto with its config in `workdir`; anonymous unless a subclass adds auth lines."""

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def auth_lines(self) -> list[str]:
        """Listener options and access control; subclasses add TLS, passwords and ACLs."""
        return ["allow_anonymous true"]

    def write_config(self) -> Path:
        conf = [
            f"listener {self.port} {HOST}",
            *self.auth_lines(),
            # As root, mosquitto would switch to user "mosquitto", who cannot read our files.
            f"user {getpass.getuser()}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self.running:
            return self
        if not Path(MOSQUITTO).exists():
            raise BrokerError(f"{MOSQUITTO} not found: install mosquitto (./install.sh does)")
        conf = self.write_config()
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode}:\n{err}\n{self.log_text()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self  # TCP is enough: TLS listeners accept before the handshake
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise BrokerError(
                        f"mosquitto did not listen on {self.port} in {timeout} s"
                    ) from None
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it lingers."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-stream, as on a power cut."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._close_pipes()

    def restart(self, kill: bool = False) -> LocalBroker:
        (self.kill if kill else self.stop)()
        return self.start()

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
