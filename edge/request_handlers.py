"""What the door does for each verified MQTT request: enroll, delete, list, sync, unlock.

The MQTT service calls `handle` from two lanes (see edge/mqtt/client.py): enroll and sync may
take seconds (photos through the pipeline), unlock, delete and list never wait behind them. So
a delete can overtake an enroll or sync that arrived earlier; the outcome must still be what
the requests say in the order they arrived: an enroll of a person deleted after it arrived is
not stored, and a sync that arrived before a delete does not bring the person back.

Every request except `list` is written to the audit topic with its outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge.config import LimitsConfig
from edge.enroll import Enroller, EnrollmentError, ReadyEmbedding, check_embeddings
from edge.imageio import ImageError, checked_size, decode_image
from edge.mqtt.client import RequestFailed
from edge.mqtt.discovery import REMOTE_UNLOCK
from edge.opener import DoorOpener
from edge.relay import RelayError
from edge.store import StoreError, Template
from edge.templates import Templates

log = logging.getLogger(__name__)

MAX_REASON = 150  # events cap reasons at 200 characters, with room for REMOTE_UNLOCK


class RequestTimeout(Exception):
    """The request ran past limits.max_request_s; nothing of it was stored."""


class RequestHandlers:
    """The door's side of each request. `enroller` None: photo enrollment is refused (a door
    without a pipeline, e.g. a simulated one); `opener` None: unlock is refused."""

    def __init__(
        self,
        templates: Templates,
        embedding_dim: int,
        enroller: Enroller | None,
        opener: DoorOpener | None,
        limits: LimitsConfig,
        pulse_s: float,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.templates = templates
        self.embedding_dim = embedding_dim
        self.store = templates.store
        self.enroller = enroller
        self.opener = opener
        self.limits = limits
        self.pulse_s = pulse_s
        self.audit = audit
        # Ordering across lanes: the arrival number of the latest delete per person, and the
        # persons an enroll is working on (arrival number), under one lock with the writes.
        self._write_lock = threading.Lock()
        self._deleted_at: dict[str, int] = {}
        self._enrolling: dict[str, int] = {}

    # -- entry point (called on an MQTT lane) -------------------------------------------------

    def handle(self, action: str, payload: Any, verified: Any) -> dict[str, Any]:
        record = {
            "time": time.time(),
            "action": action,
            "request_id": verified.id,
            "key_id": verified.key_id,
            "signed": verified.signed,
        }
        outcome: dict[str, Any] = {"status": "error", "error": "internal error"}
        try:
            handler = {
                "enroll": self.enroll,
                "delete": self.delete,
                "list": self.list,
                "sync": self.sync,
                "unlock": self.unlock,
            }.get(action)
            if handler is None:
                raise ValueError(f"unknown action {action!r}")
            result = handler(payload, verified)
            outcome = {"status": "ok"}
            return result
        except (
            EnrollmentError,
            StoreError,
            RelayError,
            ImageError,
            RequestTimeout,
            ValueError,
        ) as err:
            outcome = {"status": "error", "error": str(err)}
            reason = getattr(err, "reason", None)  # EnrollmentError's and StoreError's codes
            raise RequestFailed(str(err), reason if isinstance(reason, str) else None) from None
        finally:
            if self.audit is not None and action != "list":
                try:
                    self.audit({**record, **outcome})
                except Exception:
                    log.exception("audit record for %s could not be queued", verified.id)

    # -- the actions ---------------------------------------------------------------------------

    def enroll(self, p: Any, v: Any) -> dict[str, Any]:
        self._forget_older_deletes(v.seq)
        with self._write_lock:
            self._enrolling[p.person_id] = v.seq
        try:
            templates = self._templates_for(p, self._deadline(v))
            with self._write_lock:
                self._refuse_if_deleted_since(p.person_id, v.seq)
                self.store.enroll(p.person_id, p.name, templates, replace=p.replace)
        finally:
            with self._write_lock:
                if self._enrolling.get(p.person_id) == v.seq:
                    del self._enrolling[p.person_id]
        info = self.store.get(p.person_id)
        return {
            "person_id": p.person_id,
            "templates": info.templates,
            "state": self.templates.changed(),
        }

    def _templates_for(self, p: Any, deadline: float) -> list[Template]:
        if p.embeddings is not None:
            return self._check_embeddings(p.embeddings)
        if self.enroller is None:
            raise EnrollmentError("no_pipeline", "this door enrolls ready embeddings only")
        images = self._decode_photos(p.images)
        return self.enroller.templates_from_photos(images, check=lambda: self._in_time(deadline))

    def _decode_photos(self, photos: Sequence[bytes]) -> list[np.ndarray]:
        # Every header first: the request's total is known before a single pixel is decoded.
        total = 0
        for i, data in enumerate(photos, 1):
            _, width, height = checked_size(data, f"image {i}", self.limits)
            total += width * height
        if total > self.limits.max_request_pixels:
            raise ImageError(
                f"the photos hold {total / 1e6:.1f} MP together, over "
                f"limits.max_request_pixels ({self.limits.max_request_pixels / 1e6:g} MP)"
            )
        return [decode_image(data, f"image {i}", self.limits) for i, data in enumerate(photos, 1)]

    def delete(self, p: Any, v: Any) -> dict[str, Any]:
        with self._write_lock:
            self._deleted_at[p.person_id] = v.seq
            pending = p.person_id in self._enrolling
            try:
                self.store.delete(p.person_id)
            except StoreError:
                if not pending:
                    raise
                # Not stored yet: the enrollment in progress will not be stored either.
                log.info("delete %s: cancelled its enrollment in progress", p.person_id)
        return {
            "person_id": p.person_id,
            "cancelled_enrollment": pending,
            "state": self.templates.changed(),
        }

    def list(self, _p: Any, v: Any) -> dict[str, Any]:
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
        return {"persons": persons, "state": self.templates.state()}

    def sync(self, p: Any, v: Any) -> dict[str, Any]:
        self._forget_older_deletes(v.seq)
        deadline = self._deadline(v)
        batch = []
        for person in p.persons:
            batch.append((person.person_id, person.name, self._check_embeddings(person.embeddings)))
        self._in_time(deadline)
        with self._write_lock:
            # A delete that arrived after this sync wins: the person stays gone.
            later = {pid for pid, seq in self._deleted_at.items() if seq > v.seq}
            kept = [b for b in batch if b[0] not in later]
            if len(kept) < len(batch):
                log.info(
                    "sync: left out %d person(s) deleted after it arrived", len(batch) - len(kept)
                )
            self.store.replace_all(kept)
        return {"persons": len(kept), "state": self.templates.changed()}

    def unlock(self, p: Any, _v: Any) -> dict[str, Any]:
        if self.opener is None:
            raise RelayError("this door has no relay")
        seconds = p.seconds or self.pulse_s
        reason = (p.reason or "no reason given")[:MAX_REASON]
        # No face was seen: the face fields stay empty; who asked is in the audit record.
        event = {
            "event_id": uuid.uuid4().hex,
            "time": time.time(),
            "decision": "unlock",
            "person": None,
            "name": None,
            "score": None,
            "threshold": None,
            "masked": None,
            "liveness": None,
            "frames": 0,
            "latency_ms": 0.0,
            "reason": f"{REMOTE_UNLOCK}{reason}",
        }
        self.opener.decided(event, open_s=seconds)
        return {"unlocked_s": seconds, "event_id": event["event_id"]}

    # -- helpers -------------------------------------------------------------------------------

    def _check_embeddings(self, embeddings: Sequence[Any]) -> list[Template]:
        ready = [
            ReadyEmbedding(e.model_id, np.asarray(e.vector, np.float32), e.masked)
            for e in embeddings
        ]
        return check_embeddings(ready, self.templates.model_id, self.embedding_dim)

    def _deadline(self, v: Any) -> float:
        start = v.received if v.received is not None else time.monotonic()
        return start + self.limits.max_request_s

    def _in_time(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise RequestTimeout(
                f"took longer than limits.max_request_s ({self.limits.max_request_s:g} s); "
                "nothing was stored"
            )

    def _refuse_if_deleted_since(self, person_id: str, seq: int) -> None:
        if self._deleted_at.get(person_id, -1) > seq:
            raise EnrollmentError(
                "deleted_meanwhile",
                f"not stored: a delete of {person_id} arrived after this enrollment",
            )

    def _forget_older_deletes(self, seq: int) -> None:
        # The slow lane runs in arrival order: requests after this one arrived later still,
        # so deletes older than it can no longer overtake anything.
        with self._write_lock:
            for pid in [pid for pid, s in self._deleted_at.items() if s < seq]:
                del self._deleted_at[pid]
