"""Acting on a decision: the relay pulse, then telling everyone (lock state, event, snapshot).

Both the frame loop (a face) and the remote `unlock` request (a signed command) end here, so an
opening looks the same on the relay, on Home Assistant's lock and in the event stream.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.relay import Relay

log = logging.getLogger(__name__)

MAX_RECENT = 1000  # decisions kept for the demo and tests; bounded for a door that runs months


class DoorOpener:
    """Pulses the relay for unlocks and publishes every decision; thread-safe.

    `mqtt` is the door's MqttService or None; `on_decision` (demo, tests) sees each event.
    """

    def __init__(
        self,
        relay: Relay,
        mqtt: Any,
        device_id: str | None,
        snapshots: bool = False,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.relay = relay
        self.mqtt = mqtt
        self.device_id = device_id
        self.snapshots = snapshots
        self.on_decision = on_decision
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT)
        self._timers: list[threading.Timer] = []
        self._timers_lock = threading.Lock()
        self._closed = threading.Event()

    def decided(
        self, event: dict[str, Any], open_s: float | None = None, image: np.ndarray | None = None
    ) -> None:
        """Open for `open_s` seconds (None: do not open), then announce `event`.

        A relay failure raises before anything is announced. Once the door is open nothing
        here raises: losing the radio must not turn an opening into an error.
        """
        event = {**event, "device": self.device_id}
        if open_s is not None:
            self.relay.pulse(open_s)
        self.recent.append(event)
        if self.mqtt is not None:
            try:
                if open_s is not None:
                    self.mqtt.publish_lock(False)
                    self._announce_relock(open_s)
                self.mqtt.publish_event(event)
                if self.snapshots and image is not None:
                    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
                    if ok:
                        self.mqtt.publish_snapshot(buf.tobytes())
            except Exception:
                log.exception("event %s could not be queued", event.get("event_id"))
        if self.on_decision is not None:
            self.on_decision(event)

    def _announce_relock(self, seconds: float) -> None:
        """Tell Home Assistant the door is locked again once the pulse is over."""
        timer = threading.Timer(seconds, self._publish_locked)
        timer.daemon = True
        with self._timers_lock:
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _publish_locked(self) -> None:
        if self.mqtt is None or self._closed.is_set():
            return
        if self.relay.unlocked:
            self._announce_relock(0.5)  # a longer pulse extended this one: not locked yet
            return
        self.mqtt.publish_lock(True)

    def close(self) -> None:
        """Stop the relock announcements (the door's shutdown relocks and says so itself)."""
        self._closed.set()
        with self._timers_lock:
            for t in self._timers:
                t.cancel()
