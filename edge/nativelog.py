"""Native libraries' start-up chatter kept off stderr, unless asked for (`-v`).

MediaPipe, TensorFlow Lite and OpenCV print INFO and WARNING lines from C++ straight to file
descriptor 2 while their graphs load ("W0000 … inference_feedback_manager.cc …", "INFO: Created
TensorFlow Lite XNNPACK delegate"), on every command, where Python's logging cannot reach them.
While a model loads, fd 2 goes to a temporary file; afterwards every line that is not such
chatter (errors, Python's own output meanwhile) is written to the real stderr, so nothing but
the noise is lost.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# absl/glog INFO and WARNING lines, TFLite's INFO lines, OpenCV's INFO/WARN lines.
_NOISE = re.compile(
    r"^(?:[IW]\d{4} |INFO: |WARNING: Logging before InitGoogle|\[ ?(?:INFO|WARN):\d+@)"
)

_show = False
_lock = threading.Lock()  # fd 2 is process-wide: one quiet window at a time


def show_native_logs(show: bool) -> None:
    """Let native libraries print everything (the CLI's -v)."""
    global _show
    _show = show


@contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Hold back native INFO/WARNING chatter printed while the block runs."""
    if _show:
        yield
        return
    with _lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to quieten
            yield
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
                kept = [line for line in text.splitlines() if not _NOISE.match(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")
                    sys.stderr.flush()
