"""The MQTT message contract: request envelope, per-action payloads, replies, events, state.

Requests are strict (a JSON "3" is not a number, unknown keys are refused) because they
come from outside and command a door. What the door itself publishes is validated too, so
a daemon bug is a clear error here rather than a malformed message on the broker.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

MAX_IMAGE_BYTES = 2 * 1024 * 1024
# Longest base64 text of a MAX_IMAGE_BYTES image (padding included): checked before decoding
# so a huge string is refused without allocating its decoded copy.
_MAX_IMAGE_B64 = 4 * ((MAX_IMAGE_BYTES + 2) // 3)


class _Request(BaseModel):
    # Strict: requests come from the network and are never coerced.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PersonId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Stable person id: 1–64 of A-Z a-z 0-9 _ . -",
    ),
]
MAX_EMBEDDINGS = 50  # per person in one enroll or sync request
PersonName = Annotated[str | None, Field(max_length=128, description="Display name.")]


def _decode_image(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    if len(value) > _MAX_IMAGE_B64:
        raise ValueError(f"image larger than {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if not data:
        raise ValueError("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image larger than {MAX_IMAGE_BYTES} bytes")
    return data


# Decoded to bytes at validation time: the handler receives the image file's bytes.
ImageBytes = Annotated[bytes, BeforeValidator(_decode_image)]


class Embedding(_Request):
    model_id: str = Field(
        ..., min_length=1, max_length=64, description="Embedder that made the vector."
    )
    vector: list[FiniteFloat] = Field(
        ..., min_length=16, max_length=2048, description="The embedding (finite floats)."
    )
    masked: bool = Field(False, description="The source face wore a mask.")


class EnrollPayload(_Request):
    """Add (or with replace, overwrite) one person from photos or ready embeddings."""

    person_id: PersonId
    name: PersonName = None
    images: list[ImageBytes] | None = Field(
        None,
        min_length=1,
        max_length=10,
        description="Base64 photos (JPEG/PNG), each at most 2 MiB decoded.",
    )
    embeddings: list[Embedding] | None = Field(
        None, min_length=1, max_length=MAX_EMBEDDINGS, description="Ready-made embeddings."
    )
    replace: bool = Field(False, description="Overwrite an existing person of that id.")

    @model_validator(mode="after")
    def _one_source(self) -> EnrollPayload:
        if (self.images is None) == (self.embeddings is None):
            raise ValueError("give exactly one of images or embeddings")
        return self


class DeletePayload(_Request):
    person_id: PersonId


class ListPayload(_Request):
    """No parameters: lists enrolled persons."""


class SyncPerson(_Request):
    person_id: PersonId
    name: PersonName = None
    embeddings: list[Embedding] = Field(
        ..., min_length=1, max_length=MAX_EMBEDDINGS, description="This person's embeddings."
    )


class SyncPayload(_Request):
    """Full replacement of the template set (persons absent here are removed)."""

    persons: list[SyncPerson] = Field(
        ..., max_length=10000, description="The whole template set, 0–10000 persons."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> SyncPayload:
        seen: set[str] = set()
        for p in self.persons:
            if p.person_id in seen:
                raise ValueError(f"person_id {p.person_id!r} appears twice")
            seen.add(p.person_id)
        return self


class UnlockPayload(_Request):
    reason: str | None = Field(None, max_length=200, description="Why (kept in the audit).")
    seconds: FiniteFloat | None = Field(
        None, gt=0, le=60, description="Unlock length (default: relay.pulse_s)."
    )


PAYLOAD_MODELS: dict[str, type[_Request]] = {
    "enroll": EnrollPayload,
    "delete": DeletePayload,
    "list": ListPayload,
    "sync": SyncPayload,
    "unlock": UnlockPayload,
}

_SIGNING_FIELDS = ("device", "topic", "nonce", "iat", "exp", "key", "sig")


class Envelope(_Request):
    """A request. Signed requests carry every field; unsigned ones only id and payload."""

    id: str = Field(..., min_length=1, max_length=64, description="Correlation id.")
    device: str | None = Field(
        None, min_length=1, max_length=64, description="Door the request is meant for."
    )
    topic: str | None = Field(
        None, min_length=1, max_length=512, description="Topic the request is meant for."
    )
    nonce: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{16,64}$", description="Random hex, never reused."
    )
    iat: FiniteFloat | None = Field(None, description="Issued at (Unix seconds).")
    exp: FiniteFloat | None = Field(None, description="Expires at (Unix seconds).")
    payload: dict[str, Any] = Field(..., description="The action's parameters.")
    key: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Signer's public key (base64) or key id (16 hex).",
    )
    sig: str | None = Field(
        None, min_length=1, max_length=128, description="Ed25519 signature (base64)."
    )

    @property
    def signed(self) -> bool:
        return self.key is not None or self.sig is not None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        # The id comes back in the reply: it must be printable text that UTF-8 can carry.
        if not value.isprintable():
            raise ValueError("must be printable text (no control characters or lone surrogates)")
        return value

    @model_validator(mode="after")
    def _complete_if_signed(self) -> Envelope:
        if self.signed:
            missing = [f for f in _SIGNING_FIELDS if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a signed request needs {', '.join(missing)} as well")
        return self


class Reply(BaseModel):
    """The answer to one request, on the reply topic (or the request's ResponseTopic)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(..., description="The request's id; null when it had none.")
    status: Literal["ok", "error"] = Field(..., description="Whether the request was done.")
    error: str | None = Field(None, max_length=2000, description="Why not, readable.")
    reason: str | None = Field(
        None,
        max_length=64,
        description="Why not, machine-readable, where the door has a code for it: a refusal's "
        "code (`expired`, `replayed`, …), `no_person` (a delete of someone not stored), an "
        "enrollment refusal's code.",
    )
    result: dict[str, Any] | None = Field(None, description="The action's result when ok.")
    time: float = Field(default_factory=time.time, description="Reply time (Unix seconds).")


class Event(BaseModel):
    """One decision at the door, published on <base>/event (QoS 1, through the outbox)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=64,
        description="Unique id; subscribers de-duplicate on it (delivery is at least once).",
    )
    time: FiniteFloat = Field(default_factory=time.time, description="Unix seconds.")
    device: str = Field(..., min_length=1, max_length=64, description="Door id.")
    person: str | None = Field(None, max_length=64, description="Matched person id.")
    name: str | None = Field(None, max_length=128, description="Matched person's name.")
    # The face fields are null when no face was seen (a remote unlock).
    score: FiniteFloat | None = Field(..., ge=-1, le=1, description="Best cosine similarity.")
    threshold: FiniteFloat | None = Field(..., ge=-1, le=1, description="Threshold applied.")
    masked: bool | None = Field(..., description="The face wore a mask.")
    liveness: str | None = Field(..., max_length=64, description="Liveness verdict (e.g. blink).")
    frames: int = Field(..., ge=0, le=100000, description="Frames that went into it.")
    latency_ms: FiniteFloat = Field(..., ge=0, le=3.6e6, description="First frame to decision.")
    decision: Literal["unlock", "deny", "lockout"] = Field(..., description="What happened.")
    reason: str = Field(..., max_length=200, description="Why, readable.")


class DoorState(BaseModel):
    """Retained on <base>/state: which template set the door holds."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(..., ge=0, description="Template set version (grows on each change).")
    hash: str = Field(..., max_length=128, description="Hash of the template set.")
    count: int = Field(..., ge=0, description="Enrolled persons.")
    model_id: str | None = Field(None, max_length=64, description="Embedder of the templates.")
    time: FiniteFloat = Field(default_factory=time.time, description="Unix seconds.")
