"""A mock relay that behaves like a GPIO line, for tests and machines without one.

MockLine is an output line: it tracks its level and records every edge with its times. With a
`mock_log` file it also behaves like a line across processes, as the kernel's does:
- each edge is appended to the log as a JSON line;
- the current level lives in `<mock_log>.state` (written with fsync + rename), so a line whose
  owner died mid-pulse is still unlocked for the next process (relay-safe), as a real pin keeps
  its last value;
- `<mock_log>.lock` is flock()ed while the line is requested: a second owner gets "busy" (EBUSY),
  and the kernel drops the lock when the owner dies, even by SIGKILL.

MockInput is an input line a test drives (set_level); its edges carry times like the kernel's
edge events and go through the same Debouncer as the real line's software fallback.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .base import EDGE_HISTORY, Edge, Relay, RelayError
from .debounce import Debouncer

if TYPE_CHECKING:
    from ..config import RelayConfig

log = logging.getLogger(__name__)


def state_file(log_path: Path) -> Path:
    """Where a mock line keeps its current level, next to its edge log."""
    return log_path.with_name(log_path.name + ".state")


def read_state(log_path: Path) -> dict[str, Any] | None:
    """The persisted state of the mock line logging to `log_path`; None if it never ran."""
    try:
        return json.loads(state_file(log_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RelayError(f"mock line state {state_file(log_path)}: unreadable: {err}") from err


def _write_atomic(path: Path, text: str) -> None:
    # A reader (or a crash) sees the old state or the new one, never half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class MockLine:
    """An output line: logical value, physical level, edges; optionally shared via files."""

    def __init__(self, offset: int, active_low: bool, log_path: Path | None = None) -> None:
        self.offset = offset
        self.active_low = active_low
        self.log_path = log_path
        # Without a previous owner the pin starts at the inactive level (no edge on request).
        self._physical = int(active_low)
        self._edges: deque[Edge] = deque(maxlen=EDGE_HISTORY)
        self._lock_file: IO[str] | None = None

    def request(self, active: bool) -> None:
        """Claim the line and drive it to `active`, like gpiod.request_lines with output_value."""
        if self.log_path is not None:
            self._claim(self.log_path)
        try:
            self.set_value(active)
        except BaseException:
            self.release()
            raise

    def _claim(self, log_path: Path) -> None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            f = open(log_path.with_name(log_path.name + ".lock"), "a", encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise RelayError(f"mock line {self.offset}: cannot open {log_path}: {err}") from err
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RelayError(
                f"mock line {self.offset}: busy: another process holds it ({log_path})"
            ) from None
        self._lock_file = f
        try:
            state = read_state(log_path)
        except RelayError:
            self.release()
            raise
        if state is not None:
            self._physical = int(state["physical"])

    @property
    def value(self) -> bool:
        """The logical value: True = active."""
        return bool(self._physical ^ self.active_low)

    @property
    def physical(self) -> int:
        """The level on the pin: 0 low, 1 high."""
        return self._physical

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(self._edges)

    def set_value(self, active: bool) -> None:
        physical = int(active) ^ int(self.active_low)
        if physical == self._physical:
            return
        self._physical = physical
        edge = Edge(time.monotonic(), time.time(), int(active), physical)
        self._edges.append(edge)
        if self.log_path is not None:
            self._persist(self.log_path, edge)

    def _persist(self, log_path: Path, edge: Edge) -> None:
        record = {**edge._asdict(), "line": self.offset, "pid": os.getpid()}
        try:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _write_atomic(state_file(log_path), json.dumps(record))
        except OSError as err:
            raise RelayError(f"mock line {self.offset}: cannot record edge: {err}") from err

    def release(self) -> None:
        """Give the line back; like a real pin it keeps its level (in the state file)."""
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None


class MockInput:
    """An input line whose physical level a test sets; thread-safe.

    Like the kernel, it queues an edge event (monotonic time, logical level) per level change,
    and reports its current logical value.
    """

    def __init__(self, offset: int, active_low: bool, level: int | None = None) -> None:
        self.offset = offset
        self.active_low = active_low
        # Default: the contact is closed (door shut), which reads active.
        self._physical = int(not active_low) if level is None else int(level)
        self._events: list[tuple[float, bool]] = []
        self._lock = threading.Lock()

    def set_level(self, level: int, at: float | None = None) -> None:
        """Put `level` (0 low / 1 high) on the pin, at monotonic time `at` (default: now)."""
        with self._lock:
            if int(level) == self._physical:
                return
            self._physical = int(level)
            t = time.monotonic() if at is None else at
            self._events.append((t, bool(self._physical ^ self.active_low)))

    def get_value(self) -> bool:
        with self._lock:
            return bool(self._physical ^ self.active_low)

    def read_edge_events(self) -> list[tuple[float, bool]]:
        with self._lock:
            events, self._events = self._events, []
            return events


class MockRelay(Relay):
    """The relay on a MockLine (and a MockInput door contact when configured)."""

    type_key = "mock"

    def __init__(
        self, cfg: RelayConfig, log_path: Path | None = None, door_contact: bool = True
    ) -> None:
        self.line = MockLine(cfg.line, cfg.active_low, log_path)
        dc = cfg.door_contact
        self.contact: MockInput | None = (
            MockInput(dc.line, dc.active_low) if dc is not None and door_contact else None
        )
        super().__init__(cfg, door_contact=door_contact)

    @classmethod
    def from_config(
        cls, cfg: RelayConfig, state_dir: Path | None = None, door_contact: bool = True
    ) -> MockRelay:
        log_path = cfg.mock_log
        if log_path is not None and not log_path.is_absolute() and state_dir is not None:
            log_path = state_dir / log_path
        return cls(cfg, log_path=log_path, door_contact=door_contact)

    def _open(self) -> None:
        self.line.request(active=False)
        if self.contact is not None and self.cfg.door_contact is not None:
            # A mock pin has no kernel debounce: the software debouncer does it all.
            period = self.cfg.door_contact.debounce_ms / 1000
            self._debouncer = Debouncer(self.contact.get_value(), period, time.monotonic())

    def _write(self, active: bool) -> None:
        self.line.set_value(active)

    def _release(self) -> None:
        self.line.release()

    def _contact_events(self) -> list[tuple[float, bool]]:
        return self.contact.read_edge_events() if self.contact is not None else []

    def _contact_value(self) -> bool:
        if self.contact is None:
            return super()._contact_value()
        return self.contact.get_value()

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self.line.edges

    def describe(self) -> str:
        where = f" [{self.line.log_path}]" if self.line.log_path is not None else ""
        return f"mock line {self.cfg.line}{' (active-low)' if self.active_low else ''}{where}"
