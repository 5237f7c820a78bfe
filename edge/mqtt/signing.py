"""Ed25519-signed requests: signing (servers, the `sign` command) and verification (the door).

The signature covers the canonical bytes of the envelope without "sig": JSON with sorted
keys, no spaces, UTF-8 (not \\u-escaped). It therefore binds the topic, the door, a nonce,
the issue and expiry times and the payload, so a captured request cannot be replayed later,
on another door or on another action's topic.

The door re-serialises the JSON it received, so a signer in another language must produce
the same text as Python's json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False): integers stay integers, floats use the shortest repr that round-trips.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ValidationError

from edge.config import SecurityConfig, public_key_bytes
from edge.mqtt.messages import PAYLOAD_MODELS, Envelope
from edge.mqtt.nonces import Claim, LedgerError, NonceLedger
from edge.mqtt.topics import SIGNED_ACTIONS, Topics

log = logging.getLogger(__name__)

# A sync of 10000 persons with 512-d embeddings is ~50 MB of JSON; past this it is refused
# before parsing, so a flood of giant messages cannot exhaust a Pi's memory.
MAX_REQUEST_BYTES = 64 * 1024 * 1024

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_MAX_REASON = 300


class RequestRefused(Exception):
    """A request the door will not act on. `code` is stable; str(err) is the readable reason."""

    def __init__(self, code: str, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class VerifiedRequest:
    """A request that passed every check; what the handler may act on."""

    id: str
    action: str
    topic: str
    payload: BaseModel
    signed: bool
    key_id: str | None  # which trusted key signed it (None when unsigned)
    nonce: str | None
    iat: float | None
    exp: float | None
    insecure: bool  # accepted unsigned only because security.insecure_local_dev is on
    # Set by the MQTT service: arrival order (across lanes) and arrival time (monotonic).
    seq: int = 0
    received: float | None = None


def canonical_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the envelope without "sig", canonical JSON, UTF-8."""
    body = {k: v for k, v in envelope.items() if k != "sig"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """A short id for a public key: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the 32 raw public-key bytes: the form `security.trusted_keys` holds."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(_raw_public(public)).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A base64 public key (32 raw bytes) as an Ed25519 key; ValueError when it is not one."""
    return Ed25519PublicKey.from_public_bytes(public_key_bytes(text))


def generate_keypair() -> tuple[bytes, str]:
    """A new signing key: (private key as unencrypted PKCS#8 PEM, public key base64)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_key_b64(private)


def load_private_key(
    source: bytes | str | Path, password: bytes | None = None
) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM bytes or a PEM file; ValueError naming the problem."""
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ValueError(f"{source}: cannot read key: {err.strerror or err}") from None
    else:
        data = source
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"not a PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 key ({type(key).__name__})")
    return key


def sign_request(
    private_key: Ed25519PrivateKey | bytes,
    device: str,
    topic: str,
    payload: Mapping[str, Any],
    validity_s: float = 10.0,
    now: float | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A signed request envelope, ready to json.dumps and publish on `topic`."""
    key = load_private_key(private_key) if isinstance(private_key, bytes) else private_key
    if not (math.isfinite(validity_s) and validity_s > 0):
        raise ValueError(f"validity_s must be a positive number, got {validity_s}")
    iat = time.time() if now is None else now
    envelope: dict[str, Any] = {
        "id": request_id or uuid.uuid4().hex,
        "device": device,
        "topic": topic,
        "nonce": secrets.token_hex(16),
        "iat": iat,
        "exp": iat + validity_s,
        "payload": dict(payload),
        "key": public_key_b64(key),
    }
    try:
        # A round trip through JSON: what the door parses is what gets signed.
        envelope = json.loads(json.dumps(envelope, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"payload is not plain JSON: {err}") from None
    envelope["sig"] = base64.b64encode(key.sign(canonical_bytes(envelope))).decode("ascii")
    return envelope


def _short(text: str, limit: int = _MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_error(err: ValidationError, where: str) -> str:
    e = err.errors(include_url=False)[0]
    loc = ".".join(_short(str(p), 40) for p in e["loc"])
    path = f"{where}.{loc}" if loc and where else (loc or where or "request")
    return _short(f"{path}: {e['msg']}")


def _request_id(obj: Any) -> str | None:
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 would parse to inf, which no signer can have serialised: refuse it up front.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


class Verifier:
    """Checks requests for one door; `verify` returns a VerifiedRequest or raises RequestRefused."""

    def __init__(
        self,
        security: SecurityConfig,
        device_id: str,
        prefix: str = "maskgate",
        clock: Callable[[], float] = time.time,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        nonces: NonceLedger | None = None,
    ) -> None:
        self.security = security
        self.max_request_bytes = max_request_bytes
        self.device_id = device_id
        self.topics = Topics(prefix, device_id)
        self._clock = clock
        # The door passes its durable ledger; without one (tools, tests) nonces live in memory
        # and requests issued before this verifier existed are refused (see NonceLedger).
        self.nonces = nonces if nonces is not None else NonceLedger(None, clock=clock)
        # Trusted keys by raw bytes and by key id; a malformed one is a config error.
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self._ids: dict[str, bytes] = {}
        for i, text in enumerate(security.trusted_keys):
            try:
                public = parse_public_key(text)
            except ValueError as err:
                raise ValueError(f"security.trusted_keys[{i}]: {err}") from None
            raw = _raw_public(public)
            self._keys[raw] = public
            self._ids[key_id(raw)] = raw
        if security.insecure_local_dev:
            log.error(
                "\n%s\nINSECURE: security.insecure_local_dev is on: UNSIGNED enroll, delete, "
                "sync and UNLOCK requests are obeyed from anyone who can publish to %s.\n"
                "Use this on a lab bench only, never on a real door.\n%s",
                "!" * 78,
                self.topics.request_filter,
                "!" * 78,
            )
        elif not self._keys:
            log.warning("security.trusted_keys is empty: every signed command will be refused")

    def verify(self, topic: str, raw: bytes, retained: bool) -> VerifiedRequest:
        """Check one received request; raise RequestRefused with the reason when it fails."""
        if retained:
            raise RequestRefused(
                "retained",
                "retained message: requests are never acted on from a retained message",
                self._peek_id(raw),
            )
        if len(raw) > self.max_request_bytes:
            raise RequestRefused(
                "too_large", f"request of {len(raw)} bytes exceeds {self.max_request_bytes}"
            )
        obj = self._parse(raw)
        rid = _request_id(obj)
        try:
            return self._check(topic, obj, rid)
        except RequestRefused as err:
            err.request_id = rid
            raise
        except RecursionError:  # json.dumps or pydantic on a pathologically nested request
            raise RequestRefused("not_json", "request nested too deeply", rid) from None

    def _peek_id(self, raw: bytes) -> str | None:
        # The id of a request refused before it is read, so the reply can name it.
        if len(raw) > self.max_request_bytes:
            return None
        try:
            return _request_id(self._parse(raw))
        except RequestRefused:
            return None

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestRefused("not_json", f"not UTF-8 text (byte {err.start})") from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise RequestRefused("not_json", "not JSON: nested too deeply") from None
        except ValueError as err:  # JSONDecodeError, NaN/Infinity, too many digits
            raise RequestRefused("not_json", _short(f"not JSON: {err}")) from None
        if not isinstance(obj, dict):
            raise RequestRefused("not_object", f"not a JSON object (got {type(obj).__name__})")
        return obj

    def _check(self, topic: str, obj: dict[str, Any], rid: str | None) -> VerifiedRequest:
        action = self.topics.action_of(topic)
        if action is None:
            raise RequestRefused("unknown_action", _short(f"not a request topic: {topic}"))
        model = PAYLOAD_MODELS.get(action)
        if model is None:
            raise RequestRefused(
                "unknown_action",
                _short(f"unknown action {action!r} (known: {', '.join(PAYLOAD_MODELS)})"),
            )
        try:
            env = Envelope.model_validate(obj)
        except ValidationError as err:
            raise RequestRefused("schema", "invalid request: " + _first_error(err, "")) from None

        signer: str | None = None
        insecure = False
        if env.signed:
            signer = self._check_signature(topic, obj, env)
        else:
            self._check_addressing(topic, env)
            if action in SIGNED_ACTIONS:
                if not self.security.insecure_local_dev:
                    raise RequestRefused(
                        "unsigned", f"unsigned: {action} requests must be signed (key and sig)"
                    )
                insecure = True
                log.warning("insecure_local_dev: obeying UNSIGNED %s request %s", action, env.id)
        try:
            payload = model.model_validate(env.payload)
        except ValidationError as err:
            raise RequestRefused("payload", "invalid payload: " + _first_error(err, "")) from None
        return VerifiedRequest(
            id=env.id,
            action=action,
            topic=topic,
            payload=payload,
            signed=env.signed,
            key_id=signer,
            nonce=env.nonce,
            iat=env.iat,
            exp=env.exp,
            insecure=insecure,
        )

    def _check_addressing(self, topic: str, env: Envelope) -> None:
        if env.device is not None and env.device != self.device_id:
            raise RequestRefused(
                "wrong_device", f"meant for door {env.device!r}, this is {self.device_id!r}"
            )
        if env.topic is not None and env.topic != topic:
            raise RequestRefused(
                "wrong_topic", _short(f"meant for topic {env.topic!r}, received on {topic!r}")
            )

    def _check_signature(self, topic: str, obj: dict[str, Any], env: Envelope) -> str:
        assert env.key is not None and env.sig is not None  # the envelope model ensures it
        public = self._find_key(env.key)
        try:
            sig = base64.b64decode(env.sig, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRefused("bad_signature", "bad signature: sig is not base64") from None
        try:
            public.verify(sig, canonical_bytes(obj))
        except InvalidSignature:
            raise RequestRefused(
                "bad_signature", "bad signature: does not match the request's content"
            ) from None
        except UnicodeEncodeError:
            raise RequestRefused("not_json", "invalid Unicode (a lone surrogate)") from None
        # Authentic from here on: what it says about itself can be trusted.
        if env.device != self.device_id:
            raise RequestRefused(
                "wrong_device", f"signed for door {env.device!r}, this is {self.device_id!r}"
            )
        if env.topic != topic:
            raise RequestRefused(
                "wrong_topic", _short(f"signed for topic {env.topic!r}, received on {topic!r}")
            )
        self._check_time(env)
        return key_id(public)

    def _find_key(self, key: str) -> Ed25519PublicKey:
        raw = self._ids.get(key) if _KEY_ID.match(key) else None
        if raw is None:
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        public = self._keys.get(raw) if raw else None
        if public is None:
            raise RequestRefused(
                "unknown_key", _short(f"unknown key {key!r}: not in security.trusted_keys")
            )
        return public

    def _check_time(self, env: Envelope) -> None:
        assert env.iat is not None and env.exp is not None and env.nonce is not None
        now = self._clock()
        skew = self.security.clock_skew_s
        if env.exp <= env.iat:
            raise RequestRefused("bad_validity", "exp must be later than iat")
        if env.exp - env.iat > self.security.max_validity_s:
            raise RequestRefused(
                "validity_too_long",
                f"valid for {env.exp - env.iat:.1f} s, longer than the allowed "
                f"{self.security.max_validity_s:g} s",
            )
        if env.iat > now + skew:
            raise RequestRefused(
                "future",
                f"issued in the future ({env.iat - now:.1f} s ahead, tolerance {skew:g} s): "
                "check the signer's clock",
            )
        if now > env.exp + skew:
            raise RequestRefused(
                "expired", f"expired {now - env.exp:.1f} s ago (tolerance {skew:g} s)"
            )
        if env.iat < self.nonces.created - skew:
            raise RequestRefused(
                "predates_ledger",
                "issued before this door's replay ledger was created (first start or a wiped "
                "state directory), so a replay could not be told apart: sign it anew",
            )
        # Durable before the request acts: a signed request acts at most once, across restarts.
        try:
            claim = self.nonces.claim(env.nonce, env.exp + skew, now)
        except LedgerError as err:
            log.error("%s", err)
            raise RequestRefused("ledger", f"not done: {err}") from None
        if claim is Claim.REPLAYED:
            raise RequestRefused("replayed", "replayed: this nonce was already used")
        if claim is Claim.FORGOTTEN:
            raise RequestRefused(
                "expired", "expired: older than the nonces this door still remembers"
            )
        if claim is Claim.TOO_MANY:
            raise RequestRefused("busy", "too many recent requests; try again later")
