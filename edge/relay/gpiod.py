"""The relay on a real GPIO line through libgpiod v2 (the `gpiod` Python package).

`gpiod` is imported when a relay is built, not when edge.relay is: a machine without it (or with
the old v1 bindings) gets a RelayError naming the line, which the daemon reports.

Levels: the output is requested with libgpiod's active_low, so the kernel does the inversion and
this code only ever speaks logical values: ACTIVE = unlocked, INACTIVE = locked. With
active_low=True the pin is low while unlocked and high while locked.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .base import EDGE_HISTORY, Edge, Relay, RelayError
from .debounce import Debouncer

if TYPE_CHECKING:
    from ..config import RelayConfig

log = logging.getLogger(__name__)

CONSUMER = "maskgate"  # what `gpioinfo` shows as the lines' user
# Kernel edge-event buffer for the contact: room for a burst of bounces between two reads.
EVENT_BUFFER = 256

# What an errno usually means on a GPIO chip, as a hint after the system's own message.
_HINTS = {
    errno.ENOENT: "no such GPIO chip; see `ls /dev/gpiochip*` and relay.chip",
    errno.EACCES: "permission denied; the service user needs the gpio group (or a udev rule)",
    errno.EPERM: "permission denied; the service user needs the gpio group (or a udev rule)",
    errno.EBUSY: "the line is in use by another process; is maskgate already running? "
    "(`gpioinfo` shows the consumer)",
    errno.EINVAL: "the chip refused the settings; is the line offset on this chip?",
    errno.ENODEV: "not a GPIO chip device",
    errno.ENOTTY: "not a GPIO chip device",
}


def chip_path(chip: str) -> str:
    """libgpiod v2 opens chips by path: a bare name like 'gpiochip0' means /dev/gpiochip0."""
    return chip if "/" in chip else f"/dev/{chip}"


def _import_gpiod(where: str) -> ModuleType:
    try:
        import gpiod
    except ImportError as err:
        raise RelayError(
            f"{where}: the gpiod package (libgpiod v2 Python bindings) is not importable: {err}"
        ) from err
    if not hasattr(gpiod, "request_lines"):
        # The unrelated v1 bindings share the name but not the API.
        version = getattr(gpiod, "__version__", "?")
        raise RelayError(f"{where}: gpiod {version} is not the libgpiod v2 bindings (need >= 2)")
    return gpiod


def _explain(err: BaseException) -> str:
    hint = _HINTS.get(getattr(err, "errno", None) or -1)
    return f"{err} ({hint})" if hint else str(err)


class GpiodRelay(Relay):
    """The lock relay on one output line, the door contact on an optional input line."""

    type_key = "gpiod"

    def __init__(self, cfg: RelayConfig, door_contact: bool = True) -> None:
        self.chip = chip_path(cfg.chip)
        self._out: Any = None  # gpiod.LineRequest for the relay output
        self._in: Any = None  # gpiod.LineRequest for the door contact
        self._level = 0  # logical value last driven; the request drives INACTIVE
        self._edges: deque[Edge] = deque(maxlen=EDGE_HISTORY)
        self._io_lock = threading.Lock()  # a LineRequest needs external synchronisation
        self._active: Any = None  # gpiod.line.Value members, set once gpiod is imported
        self._inactive: Any = None
        self._rising: Any = None
        super().__init__(cfg, door_contact=door_contact)

    def _open(self) -> None:
        gpiod = _import_gpiod(self.describe())
        Value = gpiod.line.Value
        self._active, self._inactive = Value.ACTIVE, Value.INACTIVE
        self._rising = gpiod.EdgeEvent.Type.RISING_EDGE
        settings = gpiod.LineSettings(
            direction=gpiod.line.Direction.OUTPUT,
            output_value=Value.INACTIVE,  # requested locked: no glitch open at start
            active_low=self.active_low,
        )
        try:
            self._out = gpiod.request_lines(
                self.chip, consumer=CONSUMER, config={self.cfg.line: settings}
            )
        except (OSError, ValueError) as err:
            raise RelayError(
                f"{self.describe()}: cannot request the lock output: {_explain(err)}"
            ) from err
        if self.wants_contact:
            try:
                self._open_contact(gpiod)
            except BaseException:
                self._release()  # the output stays at its requested, locked level
                raise

    def _open_contact(self, gpiod: ModuleType) -> None:
        dc = self.cfg.door_contact
        assert dc is not None
        where = f"gpiod {self.chip} line {dc.line} (door contact)"
        settings = gpiod.LineSettings(
            direction=gpiod.line.Direction.INPUT,
            edge_detection=gpiod.line.Edge.BOTH,
            active_low=dc.active_low,
            debounce_period=timedelta(milliseconds=dc.debounce_ms),
        )
        kernel_debounce = False
        try:
            self._in = self._request_input(gpiod, dc.line, settings)
        except OSError as err:
            if dc.debounce_ms == 0:
                raise RelayError(f"{where}: cannot request: {_explain(err)}") from err
            # Old kernels refuse debounce settings: ask without, and debounce here.
            log.info("%s: kernel debounce refused (%s); debouncing in software", where, err)
            settings.debounce_period = timedelta()
            try:
                self._in = self._request_input(gpiod, dc.line, settings)
            except OSError as err2:
                raise RelayError(f"{where}: cannot request: {_explain(err2)}") from err2
        else:
            kernel_debounce = dc.debounce_ms > 0 and self._kernel_debounced(gpiod, dc.line)
        period = 0.0 if kernel_debounce else dc.debounce_ms / 1000
        log.debug("%s: debounce %s", where, "in the kernel" if kernel_debounce else "in software")
        self._debouncer = Debouncer(bool(self._in.get_value(dc.line)), period, time.monotonic())

    def _request_input(self, gpiod: ModuleType, line: int, settings: Any) -> Any:
        return gpiod.request_lines(
            self.chip, consumer=CONSUMER, config={line: settings}, event_buffer_size=EVENT_BUFFER
        )

    def _kernel_debounced(self, gpiod: ModuleType, line: int) -> bool:
        # The request may succeed without the kernel applying the period: ask the line.
        try:
            with gpiod.Chip(self.chip) as chip:
                info = chip.get_line_info(line)
        except OSError as err:
            log.debug("%s: line info unavailable (%s)", self.describe(), err)
            return False
        return bool(info.debounced) and info.debounce_period > timedelta()

    def _write(self, active: bool) -> None:
        if self._out is None:
            raise RelayError(f"{self.describe()}: line not requested")
        with self._io_lock:
            try:
                self._out.set_value(self.cfg.line, self._active if active else self._inactive)
            except (OSError, ValueError) as err:
                raise RelayError(f"{self.describe()}: cannot set the line: {err}") from err
        level = int(active)
        if level != self._level:
            # Software time of the write: the kernel does not timestamp output changes.
            self._level = level
            self._edges.append(Edge(time.monotonic(), time.time(), level, level ^ self.active_low))

    def _release(self) -> None:
        with self._io_lock:
            for request in (self._in, self._out):
                if request is None:
                    continue
                try:
                    request.release()
                except Exception as err:  # releasing is best effort; the kernel frees on exit
                    log.warning("%s: release failed: %s", self.describe(), err)
            self._in = self._out = None

    def _contact_events(self) -> list[tuple[float, bool]]:
        events: list[tuple[float, bool]] = []
        with self._io_lock:
            try:
                while self._in.wait_edge_events(0):
                    for e in self._in.read_edge_events():
                        # CLOCK_MONOTONIC stamps, the clock time.monotonic() reads.
                        # Edges are logical too: with active_low, RISING means "became active".
                        events.append((e.timestamp_ns / 1e9, e.event_type is self._rising))
            except OSError as err:
                raise RelayError(f"{self.describe()}: cannot read the door contact: {err}") from err
        return events

    def _contact_value(self) -> bool:
        dc = self.cfg.door_contact
        assert dc is not None and self._in is not None
        with self._io_lock:
            try:
                return bool(self._in.get_value(dc.line))
            except OSError as err:
                raise RelayError(f"{self.describe()}: cannot read the door contact: {err}") from err

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(self._edges)

    def describe(self) -> str:
        return f"gpiod {self.chip} line {self.cfg.line}{' (active-low)' if self.active_low else ''}"
