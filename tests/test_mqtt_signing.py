"""Request signatures and the message contract, with real Ed25519 keys (no broker needed)."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.commands import sign as sign_cmd
from edge.commands.common import CommandError
from edge.config import SecurityConfig
from edge.mqtt.messages import (
    MAX_IMAGE_BYTES,
    EnrollPayload,
    Event,
    ListPayload,
    SyncPayload,
    UnlockPayload,
)
from edge.mqtt.nonces import NonceLedger
from edge.mqtt.signing import (
    RequestRefused,
    Verifier,
    canonical_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    parse_public_key,
    sign_request,
)
from edge.mqtt.topics import Topics

T = Topics("maskgate", "door1")
NOW = 1_700_000_000.0


class Clock:
    """A settable clock for the verifier: expiry is tested without sleeping."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    pem, pub = generate_keypair()
    other_pem, _ = generate_keypair()
    return {"pem": pem, "pub": pub, "key": load_private_key(pem), "other": other_pem}


def make_verifier(keys: dict[str, Any], clock: Clock | None = None, **sec: Any) -> Verifier:
    return Verifier(
        SecurityConfig(trusted_keys=[keys["pub"]], **sec), "door1", "maskgate", clock or Clock()
    )


def signed(keys: dict[str, Any], action: str = "unlock", payload: Any = None, **kw: Any) -> dict:
    kw.setdefault("now", NOW)
    return sign_request(
        kw.pop("key", keys["key"]),
        kw.pop("device", "door1"),
        kw.pop("topic", T.request(action)),
        {} if payload is None else payload,
        **kw,
    )


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def refused(v: Verifier, topic: str, data: bytes, retained: bool = False) -> RequestRefused:
    with pytest.raises(RequestRefused) as info:
        v.verify(topic, data, retained)
    return info.value


# ------------------------------------------------------------------ round trip, canonical form


def test_sign_verify_round_trip(keys: dict[str, Any]) -> None:
    env = signed(keys, "unlock", {"reason": "delivery", "seconds": 5})
    req = make_verifier(keys).verify(T.request("unlock"), raw(env), False)
    assert req.action == "unlock" and req.id == env["id"] and req.signed and not req.insecure
    assert isinstance(req.payload, UnlockPayload)
    assert req.payload.seconds == 5 and req.payload.reason == "delivery"
    assert req.key_id == key_id(parse_public_key(keys["pub"]))
    assert set(env) == {"id", "device", "topic", "nonce", "iat", "exp", "payload", "key", "sig"}
    assert env["exp"] - env["iat"] == 10


def test_canonical_bytes_ignore_key_order_and_sig_and_keep_utf8() -> None:
    a = {"b": 1, "a": {"y": "é", "x": [1, 2.5]}, "sig": "whatever"}
    b = {"a": {"x": [1, 2.5], "y": "é"}, "b": 1}
    assert canonical_bytes(a) == canonical_bytes(b) == '{"a":{"x":[1,2.5],"y":"é"},"b":1}'.encode()


def test_request_signed_in_another_key_order_still_verifies(keys: dict[str, Any]) -> None:
    env = signed(keys, "delete", {"person_id": "alice"})
    shuffled = {k: env[k] for k in reversed(list(env))}
    text = json.dumps(shuffled, indent=2, ensure_ascii=True)  # any whitespace, any escaping
    req = make_verifier(keys).verify(T.request("delete"), text.encode(), False)
    assert req.payload.person_id == "alice"


def test_key_id_may_replace_the_public_key(keys: dict[str, Any]) -> None:
    env = signed(keys, "delete", {"person_id": "bob"})
    env["key"] = key_id(parse_public_key(keys["pub"]))
    env["sig"] = base64.b64encode(keys["key"].sign(canonical_bytes(env))).decode()
    assert make_verifier(keys).verify(T.request("delete"), raw(env), False).signed


# ------------------------------------------------------------------ each refusal, by code


def _resign(keys: dict[str, Any], env: dict) -> dict:
    env["sig"] = base64.b64encode(keys["key"].sign(canonical_bytes(env))).decode()
    return env


REFUSALS: dict[str, tuple[str, str]] = {
    # case: (code, words the readable reason must contain)
    "unsigned": ("unsigned", "must be signed"),
    "wrong_key": ("unknown_key", "unknown key"),
    "tampered_payload": ("bad_signature", "bad signature"),
    "other_topic": ("wrong_topic", "signed for topic"),
    "other_device": ("wrong_device", "signed for door 'door2'"),
    "expired": ("expired", "expired"),
    "future": ("future", "issued in the future"),
    "too_long": ("validity_too_long", "longer than the allowed"),
    "retained": ("retained", "retained message"),
    "not_json": ("not_json", "not JSON"),
    "not_object": ("not_object", "not a JSON object"),
    "schema": ("schema", "invalid request: id"),
    "bad_payload": ("payload", "invalid payload: seconds"),
    "half_signed": ("schema", "needs"),
    "unknown_action": ("unknown_action", "unknown action 'open'"),
    "exp_before_iat": ("bad_validity", "exp must be later"),
}


def build_refusal(case: str, keys: dict[str, Any]) -> tuple[str, bytes, bool]:
    """(topic, raw message, retained) that must be refused for `case`."""
    topic = T.request("unlock")
    env = signed(keys, "unlock", {"reason": "x"})
    retained = False
    if case == "unsigned":
        env = {"id": "r1", "payload": {"reason": "x"}}
    elif case == "wrong_key":
        env = signed(keys, "unlock", {}, key=load_private_key(keys["other"]))
    elif case == "tampered_payload":
        env["payload"]["reason"] = "y"
    elif case == "other_topic":
        env = signed(keys, "delete", {"reason": "x"})  # signed for request/delete
    elif case == "other_device":
        env = signed(keys, "unlock", {}, device="door2")
    elif case == "expired":
        env = signed(keys, "unlock", {}, now=NOW - 60)
    elif case == "future":
        env = signed(keys, "unlock", {}, now=NOW + 60)
    elif case == "too_long":
        env = signed(keys, "unlock", {}, validity_s=600)
    elif case == "retained":
        retained = True
    elif case == "not_json":
        return topic, b"{nope", False
    elif case == "not_object":
        return topic, b"[1, 2]", False
    elif case == "schema":
        env["id"] = "x" * 65
    elif case == "bad_payload":
        env = signed(keys, "unlock", {"seconds": 61})
    elif case == "half_signed":
        del env["nonce"]
    elif case == "unknown_action":
        topic = T.request("open")
    elif case == "exp_before_iat":
        env["exp"] = env["iat"] - 1
        env = _resign(keys, env)
    return topic, raw(env), retained


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_has_its_own_reason(case: str, keys: dict[str, Any]) -> None:
    code, words = REFUSALS[case]
    topic, data, retained = build_refusal(case, keys)
    err = refused(make_verifier(keys), topic, data, retained)
    assert err.code == code, err.reason
    assert words in err.reason


def test_replayed_nonce_is_refused_within_validity(keys: dict[str, Any]) -> None:
    clock = Clock()
    v = make_verifier(keys, clock)
    data = raw(signed(keys, "unlock", {}))
    v.verify(T.request("unlock"), data, False)
    clock.now += 3
    err = refused(v, T.request("unlock"), data)
    assert err.code == "replayed" and "already used" in err.reason
    clock.now += 30  # after expiry it is refused as expired, not remembered forever
    assert refused(v, T.request("unlock"), data).code == "expired"


def test_clock_skew_is_tolerated(keys: dict[str, Any]) -> None:
    clock = Clock(NOW - 60)  # the door started a minute ago
    v = make_verifier(keys, clock, clock_skew_s=5)
    clock.now = NOW
    v.verify(T.request("unlock"), raw(signed(keys, "unlock", {}, now=NOW + 4)), False)
    v.verify(T.request("unlock"), raw(signed(keys, "unlock", {}, now=NOW - 14)), False)


def test_requests_issued_before_the_ledger_existed_are_refused(keys: dict[str, Any]) -> None:
    """A new (or wiped) ledger knows no earlier nonce: an older request could be a replay."""
    clock = Clock(NOW)
    v = make_verifier(keys, clock, clock_skew_s=5, max_validity_s=60)
    old = signed(keys, "unlock", {}, now=NOW - 30, validity_s=60)  # still valid, but older
    assert refused(v, T.request("unlock"), raw(old)).code == "predates_ledger"
    v.verify(T.request("unlock"), raw(signed(keys, "unlock", {}, now=NOW - 3)), False)


def test_a_durable_ledger_refuses_replays_after_a_restart(
    keys: dict[str, Any], tmp_path: Path
) -> None:
    clock = Clock(NOW)
    sec = SecurityConfig(trusted_keys=[keys["pub"]], max_validity_s=60)
    first = Verifier(sec, "door1", clock=clock, nonces=NonceLedger(tmp_path / "n.db", clock=clock))
    used = raw(signed(keys, "unlock", {}, now=NOW, validity_s=60))
    first.verify(T.request("unlock"), used, False)
    first.nonces.close()
    clock.now = NOW + 10  # the door restarted; the request is still valid
    ledger = NonceLedger(tmp_path / "n.db", clock=clock)
    again = Verifier(sec, "door1", clock=clock, nonces=ledger)
    assert refused(again, T.request("unlock"), used).code == "replayed"
    # A request issued before the restart but never seen is served: the ledger is older.
    unseen = raw(signed(keys, "unlock", {}, now=NOW + 1, validity_s=60))
    assert again.verify(T.request("unlock"), unseen, False).signed


def test_refusal_keeps_the_request_id(keys: dict[str, Any]) -> None:
    env = signed(keys, "unlock", {"seconds": 0}, request_id="abc-1")
    err = refused(make_verifier(keys), T.request("unlock"), raw(env))
    assert err.request_id == "abc-1"


def test_signature_over_base64_garbage_and_odd_input(keys: dict[str, Any]) -> None:
    v = make_verifier(keys)
    env = signed(keys, "unlock", {})
    env["sig"] = "!!!"
    assert refused(v, T.request("unlock"), raw(env)).code == "bad_signature"
    for data in (b"\xff\xfe", b"NaN", b'{"id": 1e400000}', b"[" * 100000, b""):
        assert refused(v, T.request("unlock"), data).code in {"not_json", "not_object"}
    # a lone surrogate inside a signed field: refused, never an exception
    env = signed(keys, "unlock", {})
    text = json.dumps(env).replace('"payload": {}', '"payload": {"reason": "\\ud800"}')
    assert refused(v, T.request("unlock"), text.encode()).code == "not_json"
    v_small = Verifier(SecurityConfig(trusted_keys=[keys["pub"]]), "door1", max_request_bytes=10)
    assert refused(v_small, T.request("list"), b'{"id":"1","payload":{}}').code == "too_large"


def test_list_may_be_unsigned(keys: dict[str, Any]) -> None:
    req = make_verifier(keys).verify(T.request("list"), b'{"id":"q","payload":{}}', False)
    assert isinstance(req.payload, ListPayload) and not req.signed and not req.insecure


def test_unsigned_request_for_another_door_is_refused(keys: dict[str, Any]) -> None:
    data = raw({"id": "q", "device": "door9", "payload": {}})
    assert refused(make_verifier(keys), T.request("list"), data).code == "wrong_device"


def test_insecure_local_dev_accepts_unsigned_and_says_so(
    keys: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.mqtt.signing")
    v = make_verifier(keys, insecure_local_dev=True)
    banner = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert banner and "INSECURE" in banner[0].getMessage()
    req = v.verify(T.request("unlock"), raw({"id": "u", "payload": {}}), False)
    assert req.insecure and not req.signed
    assert any(
        r.levelno == logging.WARNING and "UNSIGNED unlock" in r.getMessage() for r in caplog.records
    )
    # a signature that is present is still checked
    env = signed(keys, "unlock", {})
    env["payload"] = {"reason": "changed"}
    assert refused(v, T.request("unlock"), raw(env)).code == "bad_signature"
    assert refused(v, T.request("unlock"), raw(env), retained=True).code == "retained"


def test_bad_trusted_key_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"trusted_keys\[1\] 'AAAA.*': 18 bytes"):
        SecurityConfig(trusted_keys=[generate_keypair()[1], "A" * 24])
    with pytest.raises(ValueError, match=r"trusted_keys\[0\] 'not-a-key!!': not base64"):
        SecurityConfig(trusted_keys=["not-a-key!!"])


def test_concurrent_replays_accept_exactly_one(keys: dict[str, Any]) -> None:
    v = make_verifier(keys)
    data = raw(signed(keys, "unlock", {}))
    accepted, codes, lock = [], [], threading.Lock()
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            v.verify(T.request("unlock"), data, False)
            with lock:
                accepted.append(1)
        except RequestRefused as err:
            with lock:
                codes.append(err.code)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(accepted) == 1 and codes == ["replayed"] * 15


def test_a_full_ledger_refuses_rather_than_forgets(keys: dict[str, Any]) -> None:
    clock = Clock(NOW)
    v = Verifier(
        SecurityConfig(trusted_keys=[keys["pub"]]),
        "door1",
        clock=clock,
        nonces=NonceLedger(None, max_live=1, clock=clock),  # a tiny ledger, to reach the bound
    )
    v.verify(T.request("unlock"), raw(signed(keys, "unlock", {})), False)
    assert refused(v, T.request("unlock"), raw(signed(keys, "unlock", {}))).code == "busy"


# ------------------------------------------------------------------ keys


def test_keys_round_trip_and_bad_keys_are_clear(tmp_path: Path) -> None:
    pem, pub = generate_keypair()
    path = tmp_path / "k.pem"
    path.write_bytes(pem)
    key = load_private_key(path)
    assert base64.b64decode(pub) == key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_private_key(b"hello")
    with pytest.raises(ValueError, match="cannot read key"):
        load_private_key(tmp_path / "missing.pem")
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_private_key(rsa_pem)
    with pytest.raises(ValueError, match="not plain JSON"):
        sign_request(key, "door1", T.request("unlock"), {"x": float("nan")})


# ------------------------------------------------------------------ payload models


def _vec(n: int = 16) -> list[float]:
    return [0.1] * n


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"person_id": "a"}, "exactly one of images or embeddings"),
        (
            {
                "person_id": "a",
                "images": ["AAAA"],
                "embeddings": [{"model_id": "m", "vector": _vec()}],
            },
            "exactly one",
        ),
        ({"person_id": "a b", "images": ["AAAA"]}, "person_id"),
        ({"person_id": "a", "images": ["not base64!"]}, "not valid base64"),
        ({"person_id": "a", "images": []}, "at least 1"),
        ({"person_id": "a", "images": ["AAAA"] * 11}, "at most 10"),
        ({"person_id": "a", "images": ["A" * (4 * MAX_IMAGE_BYTES // 3 + 8)]}, "larger than"),
        ({"person_id": "a", "embeddings": [{"model_id": "m", "vector": _vec(15)}]}, "at least 16"),
        ({"person_id": "a", "embeddings": [{"model_id": "m", "vector": ["1"] * 16}]}, "number"),
        ({"person_id": "a", "name": "n" * 129, "images": ["AAAA"]}, "at most 128"),
        ({"person_id": "a", "images": ["AAAA"], "replace": "yes"}, "boolean"),
        ({"person_id": "a", "images": ["AAAA"], "extra": 1}, "Extra inputs"),
    ],
)
def test_enroll_payload_bounds(payload: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        EnrollPayload.model_validate(payload)


def test_enroll_payload_decodes_images() -> None:
    p = EnrollPayload.model_validate(
        {"person_id": "alice.b-1", "images": [base64.b64encode(b"\xff\xd8jpeg").decode()]}
    )
    assert p.images == [b"\xff\xd8jpeg"] and p.replace is False


def test_sync_payload_rules() -> None:
    person = {"person_id": "a", "embeddings": [{"model_id": "m", "vector": _vec()}]}
    assert SyncPayload.model_validate({"persons": []}).persons == []
    assert (
        SyncPayload.model_validate({"persons": [person]}).persons[0].embeddings[0].masked is False
    )
    with pytest.raises(ValueError, match="appears twice"):
        SyncPayload.model_validate({"persons": [person, person]})
    with pytest.raises(ValueError, match="at most 10000"):
        SyncPayload.model_validate({"persons": [person] * 10001})


def test_unlock_and_event_bounds() -> None:
    for bad in ({"seconds": 0}, {"seconds": 61}, {"reason": "r" * 201}):
        with pytest.raises(ValueError):
            UnlockPayload.model_validate(bad)
    ev = Event(
        device="door1",
        score=0.5,
        threshold=0.4,
        masked=True,
        liveness="blink",
        frames=5,
        latency_ms=80,
        decision="unlock",
        reason="match",
    )
    assert len(ev.event_id) == 32 and ev.time > 0
    with pytest.raises(ValueError):
        Event.model_validate({**ev.model_dump(), "decision": "open"})


# ------------------------------------------------------------------ keygen / sign commands


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    sign_cmd.register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.run(args)


def test_keygen_writes_a_private_key_and_prints_the_public_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signer.pem"
    assert _run(["keygen", "--out", str(out)]) == 0
    public = capsys.readouterr().out.strip()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert parse_public_key(public)  # what goes into security.trusted_keys
    with pytest.raises(CommandError, match="exists"):
        _run(["keygen", "--out", str(out)])
    assert _run(["keygen", "--out", str(out), "--force"]) == 0


def test_sign_prints_a_request_the_door_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: dict[str, Any]
) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(keys["pem"])
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    payload = tmp_path / "p.json"
    payload.write_text(json.dumps({"person_id": "carol", "name": "Carol"}))
    argv = ["sign", "--key", str(key), "--device", "door1", "--action", "enroll"]
    assert _run([*argv, "--payload", str(payload), "--image", str(photo), "--id", "e-1"]) == 0
    out = capsys.readouterr()
    assert "topic: maskgate/door1/request/enroll" in out.err
    env = json.loads(out.out)
    verifier = Verifier(SecurityConfig(trusted_keys=[keys["pub"]]), "door1")
    req = verifier.verify(T.request("enroll"), out.out.encode(), False)
    assert env["id"] == req.id == "e-1" and req.payload.images == [photo.read_bytes()]
    assert time.time() - 5 < env["iat"] < env["exp"] <= env["iat"] + 10


def test_sign_refuses_bad_input_clearly(tmp_path: Path, keys: dict[str, Any]) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(keys["pem"])
    base = ["sign", "--key", str(key), "--device", "door1"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"seconds": 99}')
    with pytest.raises(CommandError, match="invalid unlock payload: seconds"):
        _run([*base, "--action", "unlock", "--payload", str(bad)])
    bad.write_text("[1]")
    with pytest.raises(CommandError, match="JSON object"):
        _run([*base, "--action", "unlock", "--payload", str(bad)])
    with pytest.raises(CommandError, match="--image is for --action enroll"):
        _run([*base, "--action", "unlock", "--image", str(bad)])
    with pytest.raises(CommandError, match="not a PEM"):
        _run(["sign", "--key", str(bad), "--device", "door1", "--action", "list"])
    with pytest.raises(CommandError, match="device_id"):
        _run(["sign", "--key", str(key), "--device", "a/b", "--action", "list"])
    with pytest.raises(CommandError, match="HOST:PORT"):
        _run([*base, "--action", "list", "--publish", "localhost"])
