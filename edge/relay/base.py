"""The door-lock relay: an output line that is locked unless a pulse is running.

Safety rules every backend inherits from Relay:
- the output is requested already at the locked level, so starting never glitches it open;
- pulse() unlocks and a timer thread relocks when the pulse ends; any failure on the way relocks;
- close() (also __exit__ and an atexit hook) leaves the line locked, and is idempotent.

Levels are logical: "unlocked" is the line's *active* value. With `active_low` the backend (libgpiod
itself, or the mock) inverts it, so active (unlocked) is a low pin and inactive (locked) a high one.
A door contact reads active while the contact is closed, i.e. while the door is shut.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from .debounce import Debouncer

if TYPE_CHECKING:
    from types import TracebackType

    from ..config import RelayConfig

log = logging.getLogger(__name__)

# A pulse longer than this is a bug or an abuse, not a door opening: refuse it.
MAX_PULSE_S = 300.0
# A relock that failed (the line errored) is tried again this often until it succeeds.
RELOCK_RETRY_S = 0.5
# Edges kept in memory: enough to inspect recent pulses without growing for months.
EDGE_HISTORY = 1000


class RelayError(RuntimeError):
    """The relay line cannot be requested, driven or read; the message names the line and cause."""


class Edge(NamedTuple):
    """One change of the output line."""

    t_mono: float  # time.monotonic() (CLOCK_MONOTONIC: comparable across processes of one boot)
    t_wall: float  # time.time(), for logs
    level: int  # logical value after the edge: 1 = active = unlocked
    physical: int  # the pin's level after the edge (level inverted when active-low)

    @property
    def unlocked(self) -> bool:
        return bool(self.level)


def check_pulse_s(seconds: float) -> float:
    """A pulse length as float, or ValueError when it is not in (0, MAX_PULSE_S]."""
    s = float(seconds)
    if not (math.isfinite(s) and 0 < s <= MAX_PULSE_S):
        raise ValueError(f"pulse length must be in (0, {MAX_PULSE_S:g}] seconds, got {seconds!r}")
    return s


class Relay(ABC):
    """A lock relay behind lock()/pulse()/close(); thread-safe.

    Backends request their lines in _open() (the output at the locked level) and drive the logical
    level in _write(). pulse() returns at once: relocking runs on one daemon thread per relay.
    """

    # The config `type` this backend serves (see edge.relay.make_relay).
    type_key: ClassVar[str] = ""

    def __init__(self, cfg: RelayConfig, door_contact: bool = True) -> None:
        self.cfg = cfg
        self.pulse_s = check_pulse_s(cfg.pulse_s)
        self.active_low = cfg.active_low
        # relay-safe asks for no contact: a broken contact must never stop it from locking.
        self.wants_contact = door_contact and cfg.door_contact is not None
        # One re-entrant lock guards the line, the state and the deadline; the timer waits on it.
        self._cond = threading.Condition(threading.RLock())
        self._contact_lock = threading.Lock()
        self._unlocked = False
        self._deadline = 0.0  # monotonic time the running pulse ends
        self._closed = False
        self._timer: threading.Thread | None = None
        # Set by _open() when a door contact is requested.
        self._debouncer: Debouncer | None = None
        self._open()
        # Last resort for a caller that forgot close(): a normal interpreter exit relocks.
        # Death by a signal skips it (SIGKILL, and SIGTERM unless the daemon handles it): that is
        # what `relay-safe` in ExecStopPost= is for.
        atexit.register(self._close_at_exit)

    @classmethod
    def from_config(
        cls, cfg: RelayConfig, state_dir: Path | None = None, door_contact: bool = True
    ) -> Relay:
        """Build from the relay config; relative file paths resolve against `state_dir`."""
        return cls(cfg, door_contact=door_contact)

    # -- backend interface ------------------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Request the output at the locked (inactive) level, and the door contact if any."""

    @abstractmethod
    def _write(self, active: bool) -> None:
        """Drive the output's logical level; RelayError when the line refuses."""

    @abstractmethod
    def _release(self) -> None:
        """Give the lines back (the output keeps its last, locked, level)."""

    def _contact_events(self) -> list[tuple[float, bool]]:
        """Pending contact edges as (monotonic seconds, logical level), oldest first."""
        return []

    def _contact_value(self) -> bool:
        """The contact's current logical level (as the line reports it)."""
        raise RelayError(f"{self.describe()}: no door contact")

    @property
    @abstractmethod
    def edges(self) -> tuple[Edge, ...]:
        """Recent output edges, oldest first (as far as the backend can see them)."""

    @abstractmethod
    def describe(self) -> str:
        """Which line this is, for messages: e.g. 'gpiod /dev/gpiochip0 line 17'."""

    # -- public API -------------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        """True while the output is at its active (unlocked) level."""
        with self._cond:
            return self._unlocked

    @property
    def closed(self) -> bool:
        return self._closed

    def lock(self) -> None:
        """Lock now, ending any running pulse. A no-op once closed (close() locked it)."""
        with self._cond:
            self._deadline = 0.0
            self._cond.notify_all()
            if self._closed:
                return
            try:
                self._set(False)
            except BaseException:
                # Leave the retry to the timer, so a transient error still ends locked.
                self._deadline = time.monotonic() + RELOCK_RETRY_S
                self._ensure_timer()
                raise

    def pulse(self, seconds: float | None = None) -> bool:
        """Unlock now and relock `seconds` (default: pulse_s) later, from the timer thread.

        A pulse while unlocked extends it: the door relocks at the later of the two ends, never
        earlier than a pulse already promised. Returns True when this call unlocked the line,
        False when it only extended a running pulse. Raises RelayError (line locked) on failure.
        """
        s = self.pulse_s if seconds is None else check_pulse_s(seconds)
        with self._cond:
            if self._closed:
                raise RelayError(f"{self.describe()}: relay is closed")
            was_unlocked = self._unlocked
            try:
                # The timer exists before the line opens: no unlocked state without a relock.
                self._ensure_timer()
                self._set(True)
                end = time.monotonic() + s
                self._deadline = max(self._deadline, end) if was_unlocked else end
                self._cond.notify_all()
            except BaseException:
                self._lock_quietly()
                raise
        if not was_unlocked:
            log.info("%s: unlocked for %.1f s", self.describe(), s)
        return not was_unlocked

    def door_open(self) -> bool | None:
        """Debounced door state: True open, False shut, None when no contact is configured."""
        if self._debouncer is None:
            return None
        with self._contact_lock:
            if self._closed:
                raise RelayError(f"{self.describe()}: relay is closed")
            for t, level in self._contact_events():
                self._debouncer.feed(level, t)
            now = time.monotonic()
            # Edges can be lost (full event buffer): the current value resynchronises, and
            # still has to hold for the debounce period before it counts.
            current = self._contact_value()
            if current != self._debouncer.raw:
                self._debouncer.feed(current, now)
            return not self._debouncer.value(now)  # active = contact closed = door shut

    def close(self) -> None:
        """Lock, stop the timer and release the lines. Idempotent; RelayError if it could not
        confirm the locked level (the lines are released all the same)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._deadline = 0.0
            self._cond.notify_all()
            error: BaseException | None = None
            try:
                self._set(False)
            except BaseException as err:
                error = err
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=2.0)
        with self._cond, self._contact_lock:
            try:
                self._release()
            finally:
                atexit.unregister(self._close_at_exit)
        if error is not None:
            log.error("%s: could not relock on close: %s", self.describe(), error)
            if isinstance(error, RelayError):
                raise error
            raise RelayError(f"{self.describe()}: could not relock on close: {error}") from error

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _set(self, active: bool) -> None:
        was = self._unlocked
        self._write(active)
        self._unlocked = active
        if was and not active:
            log.info("%s: locked", self.describe())

    def _lock_quietly(self) -> None:
        # Used while another exception is on its way out: that one is what the caller sees.
        try:
            self._set(False)
        except BaseException:
            log.exception("%s: relock after a failed pulse also failed", self.describe())
            self._deadline = time.monotonic() + RELOCK_RETRY_S

    def _ensure_timer(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            # Daemon thread: interpreter exit must not wait out a pulse; atexit relocks instead.
            self._timer = threading.Thread(target=self._run_timer, name="relay-timer", daemon=True)
            self._timer.start()

    def _run_timer(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._unlocked and self._deadline == 0.0:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                try:
                    self._set(False)
                    self._deadline = 0.0
                except Exception:
                    log.exception(
                        "%s: relock failed; retrying in %.1f s", self.describe(), RELOCK_RETRY_S
                    )
                    self._deadline = time.monotonic() + RELOCK_RETRY_S

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:
            log.exception("%s: close at exit failed", self.describe())
