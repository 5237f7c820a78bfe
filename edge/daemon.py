"""The door service: camera → pipeline → decision → relay and MQTT, under systemd.

Threads: the frame grabber (newest frame only), MQTT's network loop and its two request lanes
(edge/request_handlers.py does the requests), the relay's pulse timer, and this module's frame
loop. Every exit path closes the relay, which leaves the door locked. READY=1 is sent once the
models are warm and the camera delivered its first frame.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture import make_grabber
from edge.config import Config
from edge.decide import Decider, Decision
from edge.enroll import Enroller, variants_from_config
from edge.observe import judge_frame
from edge.opener import DoorOpener
from edge.pipeline import Pipeline
from edge.relay import Relay, make_relay
from edge.request_handlers import RequestHandlers
from edge.store import Store
from edge.systemd import notify, watchdog_interval_s
from edge.templates import Templates, adopt_embedder

log = logging.getLogger(__name__)

GALLERY_REFRESH_S = 2.0  # local `edge enroll` / `edge delete` reach a running door this fast


class DoorError(RuntimeError):
    """The door cannot start (no camera configured, store unreadable, ...)."""


class Door:
    """Wires pipeline, store, decider, relay and MQTT; `run()` blocks until `stop()`."""

    def __init__(
        self,
        cfg: Config,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        exit_at_end: bool = False,
        camera_gate: threading.Event | None = None,
    ) -> None:
        if cfg.camera is None:
            raise DoorError("no camera configured: add a `camera:` section to the config")
        self.cfg = cfg
        self.on_decision = on_decision
        self.exit_at_end = exit_at_end
        # Set by the demo and tests: after the first frame the camera waits for this gate, so
        # enrollment can be sent to a ready door before its clip plays.
        self.camera_gate = camera_gate
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.relay: Relay | None = None
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.mqtt: Any = None
        self.templates: Templates | None = None
        self.opener: DoorOpener | None = None
        self.requests: RequestHandlers | None = None
        self.decider = Decider(cfg.decision, cfg.liveness)

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """Recent decisions (bounded), for the demo and tests."""
        return list(self.opener.recent) if self.opener is not None else []

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> int:
        state_dir = self.cfg.resolve(self.cfg.daemon.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._build(state_dir)
            grabber = make_grabber(self.cfg.camera, self.cfg.resolve, hold=self.camera_gate)
            grabber.start()
            try:
                self._start_mqtt()
                self._wait_for_camera(grabber)
                self.ready.set()
                notify("READY=1")
                notify(f"STATUS=watching {grabber.source.describe()}")
                log.info("door ready: %d people enrolled", self.templates.state()["count"])
                while self.camera_gate is not None and not self.camera_gate.wait(0.2):
                    if self._stop.is_set():
                        return 0
                self._frame_loop(grabber)
            finally:
                grabber.stop()
            return 0
        finally:
            notify("STOPPING=1")
            self._shutdown()

    def _build(self, state_dir: Path) -> None:
        """Every part of the door, wired; nothing runs yet but the relay (locked)."""
        cfg = self.cfg
        # The relay first: from here on, every exit path relocks it.
        self.relay = make_relay(cfg.relay, state_dir)
        self.relay.lock()
        self.store = Store.open(cfg)
        self.pipeline = Pipeline(cfg, video=True)  # warmed up when constructed
        if cfg.mqtt is not None:
            from edge.mqtt.client import MqttService

            self.mqtt = MqttService(
                cfg.mqtt, cfg.security, state_dir, self._handle, resolve=cfg.resolve
            )
        # An embedder change must not lock out the people enrolled under the old one.
        embedder = self.pipeline.embedder
        adopt_embedder(self.store, self.pipeline.model_id, lambda crop: embedder.embed([crop])[0])
        self.templates = Templates(
            self.store,
            self.pipeline.model_id,
            self.mqtt.publish_state if self.mqtt is not None else None,
        )
        self.templates.refresh(force=True)
        self.opener = DoorOpener(
            self.relay,
            self.mqtt,
            cfg.mqtt.device_id if cfg.mqtt else None,
            snapshots=bool(cfg.mqtt and cfg.mqtt.snapshot),
            on_decision=self._decided,
        )
        enroller = Enroller(
            self.pipeline,
            self.store,
            variants=variants_from_config(cfg.enroll),
            keep_crops=cfg.store.keep_crops,
        )
        self.requests = RequestHandlers(
            self.templates,
            self.pipeline.embedder.dim,
            enroller,
            self.opener,
            cfg.limits,
            cfg.relay.pulse_s,
            audit=self.mqtt.publish_audit if self.mqtt is not None else None,
        )

    def _start_mqtt(self) -> None:
        if self.mqtt is None:
            return
        self.mqtt.start()
        # Ready without a broker too: events wait in the outbox until it is back.
        if not self.mqtt.wait_ready(self.cfg.mqtt.connect_timeout_s):
            log.warning("broker not reachable yet; events are queued until it is")
        self.templates.announce()
        self.mqtt.publish_lock(True)

    def _wait_for_camera(self, grabber) -> None:
        """READY only once frames come: a camera that never opens is a failed start."""
        timeout = self.cfg.camera.start_timeout_s
        log.info("waiting up to %g s for the first frame of %s", timeout, grabber.source.describe())
        deadline = time.monotonic() + timeout
        while not grabber.wait_first_frame(min(0.5, max(deadline - time.monotonic(), 0))):
            if self._stop.is_set():
                raise DoorError("stopped while waiting for the camera")
            if not grabber.running or time.monotonic() >= deadline:
                why = grabber.error or ("source ended" if grabber.ended else "no frame yet")
                raise DoorError(
                    f"camera {grabber.source.describe()} delivered no frame within "
                    f"{timeout:g} s (camera.start_timeout_s): {why}"
                )

    def _shutdown(self) -> None:
        self._stop.set()
        for name, close in (
            ("relock announcements", lambda: self.opener and self.opener.close()),
            ("relay", lambda: self.relay and self.relay.lock()),
            ("lock state", lambda: self.mqtt and self.mqtt.publish_lock(True)),
            ("mqtt", lambda: self.mqtt and self.mqtt.stop()),
            ("pipeline", lambda: self.pipeline and self.pipeline.close()),
            ("store", lambda: self.store and self.store.close()),
            ("relay", lambda: self.relay and self.relay.close()),  # last: leaves it locked
        ):
            try:
                close()
            except Exception:  # one failing part must not keep the relay from locking
                log.exception("closing %s failed", name)

    # -- frames ------------------------------------------------------------------------------
    def _frame_loop(self, grabber) -> None:
        cfg = self.cfg
        watchdog = watchdog_interval_s()
        last_ping = 0.0
        face_present = False
        next_due = 0.0
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            frame = grabber.latest(timeout=0.5)
            now = time.monotonic()
            fresh = grabber.last_frame_age() < cfg.daemon.frame_stale_s
            # MQTT's threads must live; a broker outage alone must not restart a door that
            # still opens offline (its events wait in the outbox).
            mqtt_ok = self.mqtt is None or self.mqtt.alive(max_disconnected_s=float("inf"))
            # Ping only while frames are fresh and MQTT lives: a hung camera or loop restarts.
            if watchdog and fresh and mqtt_ok and now - last_ping >= watchdog:
                notify("WATCHDOG=1")
                last_ping = now
            if now - last_refresh >= GALLERY_REFRESH_S:
                last_refresh = now
                try:
                    self.templates.refresh()
                except Exception:  # a busy or broken store: keep the templates we have
                    log.exception("reloading templates failed")
            if frame is None:
                if grabber.ended and self.exit_at_end:
                    log.info("camera source ended")
                    return
                if not grabber.running:
                    # A finite source ran out, or capture died: let systemd restart the door.
                    raise DoorError(f"camera stopped: {grabber.error or 'source ended'}")
                continue
            if now < next_due:
                continue  # over the rate for this state: drop the frame, keep the newest
            rate = cfg.decision.active_fps if face_present else cfg.decision.idle_fps
            next_due = now + 1.0 / rate
            try:
                face_present = self._on_frame(frame)
            except Exception:
                # One bad frame must not take the door down; a persistent fault shows in the
                # journal, and a hang stops the watchdog pings.
                log.exception("frame %d failed", frame.index)
                face_present = False

    def _on_frame(self, frame) -> bool:
        """Process one frame; returns whether a face is present (the loop's rate choice). The
        landmark step runs first; the rest of the chain follows only on a face."""
        assert self.pipeline is not None
        judged = judge_frame(
            self.pipeline,
            self.decider,
            self.templates.gallery,
            self.cfg.match,
            frame.image,
            frame.t_capture,
        )
        for d in judged.decisions:
            self._act(d, frame.image)
        return judged.present

    def _act(self, d: Decision, image: np.ndarray) -> None:
        log.info(
            "%s: person=%s score=%.3f threshold=%.3f masked=%s liveness=%s (%s)",
            d.decision,
            d.person,
            d.score,
            d.threshold,
            d.masked,
            d.liveness,
            d.reason,
        )
        event = {**d.as_dict(), "name": self._name(d.person)}
        open_s = self.cfg.relay.pulse_s if d.decision == "unlock" else None
        self.opener.decided(event, open_s=open_s, image=image)

    def _decided(self, event: dict[str, Any]) -> None:
        if self.on_decision is not None:  # read late: the demo sets it after start
            self.on_decision(event)

    def _name(self, person: str | None) -> str | None:
        if person is None or self.store is None:
            return None
        try:
            return self.store.get(person).name
        except Exception:
            return None

    def _handle(self, action: str, payload: Any, verified: Any) -> dict[str, Any]:
        # Called on an MQTT lane; the handlers exist before MQTT starts.
        return self.requests.handle(action, payload, verified)
