"""The door service: camera → pipeline → decision → relay and MQTT, under systemd.

Threads: the frame grabber (newest frame only), MQTT's network loop and request worker, the
relay's pulse timer, and this module's frame loop. Every exit path closes the relay, which
leaves the door locked.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.capture import make_grabber
from edge.config import Config
from edge.decide import Decider, Decision
from edge.enroll import Enroller, EnrollmentError, ReadyEmbedding, variants_from_config
from edge.imageio import ImageError, decode_image
from edge.match import Gallery
from edge.observe import judge_frame
from edge.pipeline import Pipeline
from edge.relay import Relay, make_relay
from edge.store import Store, StoreState
from edge.systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)

GALLERY_REFRESH_S = 2.0  # local `edge enroll` / `edge delete` reach a running door this fast


class DoorError(RuntimeError):
    """The door cannot start (no camera configured, store unreadable, ...)."""


def state_dict(state: StoreState, model_id: str) -> dict[str, Any]:
    return {
        "version": state.version,
        "hash": state.hash,
        "count": state.persons,
        "model_id": model_id,
    }


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
        # Set by the demo and tests to hold the camera until enrollment has been sent.
        self.camera_gate = camera_gate
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.relay: Relay | None = None
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.mqtt: Any = None
        self._gallery_lock = threading.Lock()
        self._gallery: Gallery | None = None
        self._gallery_version = -1
        self.decider = Decider(cfg.decision, cfg.liveness)
        # Recent decisions for the demo and tests; bounded for a door that runs for months.
        self.decisions: deque[dict[str, Any]] = deque(maxlen=1000)
        self._timers: list[threading.Timer] = []

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
            # The relay first: from here on, every exit path relocks it.
            self.relay = make_relay(self.cfg.relay, state_dir)
            self.relay.lock()
            self.store = Store.open(self.cfg)
            self.pipeline = Pipeline(self.cfg, video=True)  # warmed up when constructed
            self.enroller = Enroller(
                self.pipeline,
                self.store,
                variants=variants_from_config(self.cfg.enroll),
                keep_crops=self.cfg.store.keep_crops,
            )
            self._refresh_gallery(force=True)
            if self.cfg.mqtt is not None:
                from edge.mqtt.client import MqttService

                self.mqtt = MqttService(
                    self.cfg.mqtt,
                    self.cfg.security,
                    state_dir,
                    self._handle,
                    resolve=self.cfg.resolve,
                )
                self.mqtt.start()
                # Ready without a broker too: events wait in the outbox until it is back.
                if not self.mqtt.wait_ready(self.cfg.mqtt.connect_timeout_s):
                    log.warning("broker not reachable yet; events are queued until it is")
                self._publish_state()
                self.mqtt.publish_lock(True)
            self.ready.set()
            notify("READY=1")
            while self.camera_gate is not None and not self.camera_gate.wait(0.2):
                if self._stop.is_set():
                    return 0
            grabber = make_grabber(self.cfg.camera, self.cfg.resolve)
            grabber.start()
            try:
                notify(f"STATUS=watching {grabber.source.describe()}")
                log.info("door ready: %d people enrolled", len(set(self._gallery.labels)))
                self._frame_loop(grabber)
            finally:
                grabber.stop()
            return 0
        finally:
            notify("STOPPING=1")
            self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        for t in self._timers:
            t.cancel()
        for name, close in (
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
                    self._refresh_gallery()
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
                face_present = self._on_frame(frame, face_present)
            except Exception:
                # One bad frame must not take the door down; a persistent fault shows in the
                # journal, and a hang stops the watchdog pings.
                log.exception("frame %d failed", frame.index)
                face_present = False

    def _on_frame(self, frame, face_present: bool) -> bool:
        """Process one frame; returns whether a face is present.

        `face_present` (the loop's rate choice) is not needed here: the landmark step always
        runs first, and the rest of the chain follows only on a face.
        """
        assert self.pipeline is not None
        with self._gallery_lock:
            gallery = self._gallery
        judged = judge_frame(
            self.pipeline, self.decider, gallery, self.cfg.match, frame.image, frame.t_capture
        )
        for d in judged.decisions:
            self._act(d, frame.image)
        return judged.present

    def _act(self, d: Decision, image: np.ndarray) -> None:
        event = d.as_dict()
        event["device"] = self.cfg.mqtt.device_id if self.cfg.mqtt else None
        event["name"] = self._name(d.person)
        if d.decision == "unlock" and self.relay is not None:
            self.relay.pulse()
            if self.mqtt:
                self.mqtt.publish_lock(False)
                self._announce_relock(self.cfg.relay.pulse_s)
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
        self.decisions.append(event)
        if self.mqtt:
            try:
                self.mqtt.publish_event(event)
            except Exception:  # the door already acted; losing the radio must not undo that
                log.exception("event %s could not be queued", event["event_id"])
            if self.cfg.mqtt and self.cfg.mqtt.snapshot:
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if ok:
                    self.mqtt.publish_snapshot(buf.tobytes())
        if self.on_decision:
            self.on_decision(event)

    def _announce_relock(self, seconds: float) -> None:
        """Tell Home Assistant the door is locked again once the pulse is over."""
        timer = threading.Timer(seconds, self._publish_locked)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _publish_locked(self) -> None:
        if self.mqtt is None or self._stop.is_set():
            return
        if self.relay is not None and self.relay.unlocked:
            self._announce_relock(0.5)  # a longer pulse extended this one: not locked yet
            return
        self.mqtt.publish_lock(True)

    def _name(self, person: str | None) -> str | None:
        if person is None or self.store is None:
            return None
        try:
            return self.store.get(person).name
        except Exception:
            return None

    # -- templates ---------------------------------------------------------------------------
    def _refresh_gallery(self, force: bool = False) -> None:
        """Load the templates when the store's version moved (MQTT or a local `edge enroll`)."""
        assert self.store is not None and self.pipeline is not None
        state = self.store.state()
        if not force and state.version == self._gallery_version:
            return
        gallery = self.store.gallery(self.pipeline.model_id)
        with self._gallery_lock:
            # Two threads may refresh at once: never let an older set replace a newer one.
            if force or state.version >= self._gallery_version:
                self._gallery, self._gallery_version = gallery, state.version
        log.info("templates v%d loaded: %d people", state.version, state.persons)

    def _publish_state(self) -> StoreState:
        assert self.store is not None and self.pipeline is not None
        state = self.store.state(self.pipeline.model_id)  # what this door can match against
        if self.mqtt:
            self.mqtt.publish_state(state_dict(state, self.pipeline.model_id))
        return state

    def _changed(self) -> dict[str, Any]:
        self._refresh_gallery(force=True)
        return state_dict(self._publish_state(), self.pipeline.model_id)

    # -- MQTT requests (called on the MQTT worker thread) -------------------------------------
    def _handle(self, action: str, payload: Any, verified: Any) -> dict[str, Any]:
        from edge.mqtt.client import RequestFailed
        from edge.relay import RelayError
        from edge.store import StoreError

        audit = {
            "time": time.time(),
            "action": action,
            "request_id": verified.id,
            "key_id": verified.key_id,
            "signed": verified.signed,
        }
        outcome: dict[str, Any] = {"status": "error", "error": "internal error"}
        try:
            result = self._dispatch(action, payload, verified)
            outcome = {"status": "ok"}
            return result
        except (EnrollmentError, StoreError, RelayError, ImageError, ValueError) as err:
            outcome = {"status": "error", "error": str(err)}
            raise RequestFailed(str(err)) from None
        finally:
            if self.mqtt and action != "list":
                try:
                    self.mqtt.publish_audit({**audit, **outcome})
                except Exception:
                    log.exception("audit record for %s could not be queued", verified.id)

    def _dispatch(self, action: str, payload: Any, verified: Any) -> dict[str, Any]:
        handler = {
            "enroll": self._enroll,
            "delete": self._delete,
            "list": self._list,
            "sync": self._sync,
            "unlock": self._unlock,
        }.get(action)
        if handler is None:
            raise ValueError(f"unknown action {action!r}")
        return handler(payload, verified)

    def _enroll(self, p: Any, _v: Any) -> dict[str, Any]:
        assert self.store is not None
        if p.images:
            # The message layer has checked and base64-decoded the images already.
            images = [decode_image(data, f"image {i}") for i, data in enumerate(p.images, 1)]
            self.enroller.enroll_photos(p.person_id, p.name, images, replace=p.replace)
        else:
            ready = [
                ReadyEmbedding(e.model_id, np.asarray(e.vector, np.float32), e.masked)
                for e in p.embeddings
            ]
            self.enroller.enroll_embeddings(p.person_id, p.name, ready, replace=p.replace)
        info = self.store.get(p.person_id)
        return {"person_id": p.person_id, "templates": info.templates, "state": self._changed()}

    def _delete(self, p: Any, _v: Any) -> dict[str, Any]:
        assert self.store is not None
        self.store.delete(p.person_id)
        return {"person_id": p.person_id, "state": self._changed()}

    def _list(self, _p: Any, v: Any) -> dict[str, Any]:
        assert self.store is not None
        # `list` may come unsigned: names (encrypted at rest) only go to a signed request.
        persons = [
            {
                "person_id": i.person_id,
                "name": i.name if v.signed else None,
                "templates": i.templates,
                "updated": i.updated,
            }
            for i in self.store.list()
        ]
        state = state_dict(self.store.state(self.pipeline.model_id), self.pipeline.model_id)
        return {"persons": persons, "state": state}

    def _sync(self, p: Any, _v: Any) -> dict[str, Any]:
        assert self.store is not None
        batch = []
        for person in p.persons:
            ready = [
                ReadyEmbedding(e.model_id, np.asarray(e.vector, np.float32), e.masked)
                for e in person.embeddings
            ]
            batch.append((person.person_id, person.name, self.enroller.check_embeddings(ready)))
        self.store.replace_all(batch)
        return {"persons": len(batch), "state": self._changed()}

    def _unlock(self, p: Any, v: Any) -> dict[str, Any]:
        assert self.relay is not None
        seconds = p.seconds or self.cfg.relay.pulse_s
        reason = (p.reason or "no reason given")[:150]  # events cap reasons at 200 characters
        d = Decision(
            "unlock",
            None,
            0.0,
            0.0,
            False,
            "n/a",
            0,
            0.0,
            f"remote unlock: {reason}",
        )
        event = {
            **d.as_dict(),
            "device": self.cfg.mqtt.device_id if self.cfg.mqtt else None,
            "name": None,  # who asked is in the audit record
        }
        self.relay.pulse(seconds)
        # From here on the door is open: nothing below may turn that into an error reply.
        self.decisions.append(event)
        if self.mqtt:
            try:
                self.mqtt.publish_lock(False)
                self._announce_relock(seconds)
                self.mqtt.publish_event(event)
            except Exception:
                log.exception("remote unlock %s: event could not be queued", d.event_id)
        if self.on_decision:
            self.on_decision(event)
        return {"unlocked_s": seconds, "event_id": d.event_id}
