"""Hypothesis against the running door: thousands of malformed requests through a real broker.

For every request topic at least 1,000 generated messages (random bytes, random JSON,
near-valid signed envelopes with one thing broken) plus a fixed list of pathological inputs.
Each must be answered with status "error" (replies are matched by MQTT v5 CorrelationData),
the handler must never run, nothing may be logged as an internal failure, and afterwards a
valid request must still work.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import (
    Mosquitto,
    MqttProbe,
    have_mosquitto,
    wait_until,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import SecurityConfig
from edge.mqtt.client import MqttService
from edge.mqtt.signing import generate_keypair, load_private_key, sign_request
from edge.mqtt.topics import ACTIONS

BASE = "maskgate/door1"
EXAMPLES_PER_TOPIC = 1000
BATCH = 200  # published back to back, then the replies are awaited

# 13-21 s here (mostly hypothesis generating 5,000 examples), so marked slow.
pytestmark = [
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
    pytest.mark.slow,
]

FIELDS = ("id", "device", "topic", "nonce", "iat", "exp", "payload", "key", "sig")
VECTOR = [0.25] * 16
VALID = {
    "enroll": {"person_id": "p1", "embeddings": [{"model_id": "m", "vector": VECTOR}]},
    "delete": {"person_id": "p1"},
    "list": {},
    "sync": {"persons": [{"person_id": "p1", "embeddings": [{"model_id": "m", "vector": VECTOR}]}]},
    "unlock": {"reason": "fuzz", "seconds": 1.5},
}
# Signed correctly, but the payload breaks the action's schema.
BAD_PAYLOAD = {
    "enroll": {"person_id": "p1"},
    "delete": {"person_id": "no spaces allowed"},
    "list": {"verbose": True},
    "sync": {"persons": [{"person_id": "p1", "embeddings": [{"model_id": "m", "vector": [1.0]}]}]},
    "unlock": {"seconds": 0},
}

# Keys that never include "payload": a random JSON object can then never be a valid request.
_keys = st.sampled_from([f for f in FIELDS if f != "payload"] + ["person_id", "images"]) | st.text(
    max_size=8
).filter(lambda k: k != "payload")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=4),
    max_leaves=12,
)


def near_valid(action: str, keys: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A freshly signed, valid request for `action` with exactly one thing broken."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        topic = f"{BASE}/request/{action}"
        how = draw(
            st.sampled_from(
                [
                    "drop",
                    "replace",
                    "extra",
                    "expired",
                    "future",
                    "too_long",
                    "wrong_key",
                    "wrong_device",
                    "wrong_topic",
                    "bad_payload",
                    "tamper",
                ]
            )
        )
        # A drawn id gives each branch its own examples (hypothesis skips repeated draws).
        now, kw = time.time(), {"request_id": draw(st.text(min_size=1, max_size=64))}
        if how == "expired":
            kw["now"] = now - draw(st.floats(20, 1e6))
        elif how == "future":
            kw["now"] = now + draw(st.floats(20, 1e6))
        elif how == "too_long":
            kw["validity_s"] = draw(st.floats(31, 1e6))
        key = keys["other"] if how == "wrong_key" else keys["key"]
        device = "door2" if how == "wrong_device" else "door1"
        if how == "wrong_topic":
            topic = f"{BASE}/request/{draw(st.sampled_from([a for a in ACTIONS if a != action]))}"
        payload = BAD_PAYLOAD[action] if how == "bad_payload" else VALID[action]
        env = sign_request(key, device, topic, payload, **kw)
        if how == "drop":
            del env[draw(st.sampled_from(FIELDS))]
        elif how == "replace":
            field = draw(st.sampled_from(FIELDS))
            value = draw(json_values)
            env[field] = value if value != env[field] else [value]
        elif how == "tamper":  # same types, other content: only the signature can tell
            field = draw(st.sampled_from(["id", "nonce", "iat", "payload"]))
            if field == "id":
                env["id"] = env["id"][:63] + ("x" if not env["id"].endswith("x") else "y")
            elif field == "nonce":
                env["nonce"] = ("0" if env["nonce"][0] != "0" else "1") + env["nonce"][1:]
            elif field == "iat":
                env["iat"] -= draw(st.floats(0.001, 5))
            else:
                extra = {draw(st.text(max_size=8)): draw(json_values)}
                tampered = {**env["payload"], **extra}
                env["payload"] = tampered if tampered != env["payload"] else {**tampered, "+": 1}
        elif how == "extra":
            name = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))
            env[name] = draw(json_values)
        return json.dumps(env, ensure_ascii=draw(st.booleans())).encode()

    return build()


def malformed(action: str, keys: dict[str, Any]) -> st.SearchStrategy[bytes]:
    random_json = json_values.map(lambda v: json.dumps(v).encode())
    return st.one_of(st.binary(max_size=300), random_json, near_valid(action, keys))


PATHOLOGICAL: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b"NaN",
    b'{"id": "x", "payload": {}, "iat": Infinity}',
    b'{"id": "x", "payload": {"n": 1e999}}',
    b'{"id": "x", "payload": {"n": ' + b"9" * 5000 + b"}}",
    b"[" * 100_000,
    b'{"id": "x", "payload": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
    b'{"id": "x", "payload": {"r": "\\ud800"}, "key": "k", "sig": "s"}',
    b'{"id": "\xff\xfe", "payload": {}}',
    b'{"id": "x", "id": "y", "payload": {}, "payload": 1}',
    b'{"id": "x", "payload": {}, "\\u0000": 1}',
    json.dumps({"id": "big", "payload": {"pad": "a" * 1_000_000}}).encode(),
]


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    pem, pub = generate_keypair()
    other, _ = generate_keypair()
    return {"key": load_private_key(pem), "pub": pub, "other": load_private_key(other)}


@pytest.fixture
def door(
    mosquitto: Mosquitto, tmp_path: Path, keys: dict[str, Any]
) -> Iterator[tuple[MqttService, list]]:
    calls: list = []
    svc = MqttService(
        mosquitto.mqtt_config(),
        SecurityConfig(trusted_keys=[keys["pub"]]),
        tmp_path / "state",
        lambda action, payload, req: calls.append(action) or {"ok": True},
    )
    svc.start()
    assert svc.wait_ready(10)
    yield svc, calls
    svc.stop()


def _kind(error: str) -> str:
    # "expired 12.0 s ago (tolerance 5 s)" -> "expired": the reason without its numbers.
    words = []
    for w in error.replace(":", " :").split():
        if w == ":" or w[0].isdigit() or w.startswith(("(", "'")):
            break
        words.append(w)
    return " ".join(words[:4])


class Fuzzer:
    """Publishes requests in batches and checks each got its own error reply."""

    def __init__(self, probe: MqttProbe) -> None:
        self.probe = probe
        self.seq = 0
        self.batch: list[tuple[str, int, bytes]] = []
        self.sent: dict[str, int] = {}
        self.reasons: Counter[str] = Counter()

    def add(self, action: str, data: bytes) -> None:
        self.seq += 1
        self.batch.append((action, self.seq, data))
        self.sent[action] = self.sent.get(action, 0) + 1
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        for action, seq, data in self.batch:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{BASE}/reply/fuzz/{action}"
            props.CorrelationData = str(seq).encode()
            self.probe.publish(
                f"{BASE}/request/{action}", data, qos=0, properties=props, wait=False
            )
        want = {str(seq).encode() for _, seq, _ in self.batch}
        got: dict[bytes, dict] = {}

        def answered() -> bool:
            for m in self.probe.messages(f"{BASE}/reply/fuzz/#"):
                if m.correlation in want:
                    got[m.correlation] = m.json()
            return len(got) == len(want)

        wait_until(answered, 30, f"replies to {len(want)} malformed requests", step=0.05)
        for seq_bytes, reply in got.items():
            data = next(d for _, s, d in self.batch if str(s).encode() == seq_bytes)
            assert reply["status"] == "error" and reply["error"], (data[:200], reply)
            assert reply["result"] is None
            self.reasons[_kind(reply["error"])] += 1
        self.probe.clear()
        self.batch.clear()


def fuzz_topic(fuzz: Fuzzer, action: str, keys: dict[str, Any]) -> None:
    # Hypothesis only generates here (no shrinking): each example is one published request,
    # checked when its batch is flushed.
    @settings(
        max_examples=EXAMPLES_PER_TOPIC,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=malformed(action, keys))
    def one(data: bytes) -> None:
        fuzz.add(action, data)

    one()


def test_malformed_requests_are_all_refused_and_the_door_stays_up(
    door: tuple[MqttService, list],
    mosquitto: Mosquitto,
    keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc, calls = door
    caplog.set_level(logging.ERROR, logger="edge.mqtt")  # 5000 refusals: keep only errors
    t0 = time.monotonic()
    with mosquitto.probe() as probe:
        probe.subscribe(f"{BASE}/reply/fuzz/#", qos=0)
        fuzz = Fuzzer(probe)
        for action in (*ACTIONS, "bogus"):
            for data in PATHOLOGICAL:
                fuzz.add(action, data)

        for action in ACTIONS:
            fuzz_topic(fuzz, action, keys)
        fuzz.flush()
        elapsed = time.monotonic() - t0

        assert calls == []  # the handler never ran
        # the near-valid envelopes get past parsing, into every signature and time check
        for reason in ("not JSON", "invalid request", "invalid payload", "bad signature"):
            assert fuzz.reasons[reason] > 0, fuzz.reasons
        for reason in ("unknown key", "expired", "issued in the future", "signed for topic"):
            assert fuzz.reasons[reason] > 0, fuzz.reasons
        for action in ACTIONS:
            assert fuzz.sent[action] >= EXAMPLES_PER_TOPIC + len(PATHOLOGICAL), fuzz.sent
        failures = [r for r in caplog.records if r.name.startswith("edge.mqtt")]
        assert failures == [], [r.getMessage() for r in failures[:3]]

        # still up, still obeying a good request
        assert svc.alive() and svc.ready
        probe.subscribe(f"{BASE}/reply/unlock")
        env = sign_request(keys["key"], "door1", f"{BASE}/request/unlock", {"reason": "after"})
        probe.publish(f"{BASE}/request/unlock", env)
        assert probe.wait_json(f"{BASE}/reply/unlock", "id", env["id"])["status"] == "ok"
        assert calls == ["unlock"]
    total = sum(fuzz.sent.values())
    print(f"fuzz: {total} malformed requests, all refused in {elapsed:.1f} s: {fuzz.reasons}")
