"""systemd integration: readiness, watchdog pings and journal logging; no-ops elsewhere.

Uses systemd-python when installed; the notify protocol is simple enough to speak directly
over $NOTIFY_SOCKET when it is not (e.g. a development machine without libsystemd).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def under_systemd() -> bool:
    return "INVOCATION_ID" in os.environ or "NOTIFY_SOCKET" in os.environ


def notify(state: str) -> bool:
    """Send `READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    try:
        from systemd import daemon  # type: ignore[import-not-found]

        return bool(daemon.notify(state))
    except ImportError:
        pass
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
        return True
    except OSError as err:
        log.warning("sd_notify %s failed: %s", state.split("=")[0], err)
        return False


def watchdog_interval_s() -> float | None:
    """Half the unit's WatchdogSec (systemd's advice), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class _SyslogPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{prio}>{super().format(record)}"


# journald's socket for native (structured) entries, where JournalHandler sends them.
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def journal_reachable(path: str = JOURNAL_SOCKET) -> bool:
    """journald is listening: a datagram sent to its socket would be read."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def stderr_is_journal() -> bool:
    """systemd connected our stderr to the journal ($JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: int = logging.INFO) -> str:
    """Log to the journal (structured) when it is reachable, else to stderr; returns which.

    A JournalHandler whose journald is not listening drops every line silently (seen with
    NOTIFY_SOCKET set outside a real systemd), so the journal is used only when its socket
    answers; stderr connected to the journal gets syslog priority prefixes instead of times.
    """
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler | None = None
    sink = "stderr"
    if under_systemd() and journal_reachable():
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER="maskgate")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            sink = "journal"
        except ImportError:
            pass
    if handler is None and stderr_is_journal():
        # journald reads stderr and its "<N>" syslog priority prefix; it adds the time.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SyslogPrefix("%(name)s: %(message)s"))
        sink = "journal stream"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.addHandler(handler)
    return sink
