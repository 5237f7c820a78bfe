"""MqttService against a real mosquitto: signed requests, refusals, retained topics, last will,
Home Assistant discovery, and events that survive a broker kill and a door crash.

Delivery of events is at least once: the test subscribers count unique event_ids (and report
duplicates), which is what a consumer must do too.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import (
    Mosquitto,
    MqttProbe,
    have_mosquitto,
    running_mosquitto,
    wait_until,
)
from mqtt_door import BASE, Door, Recorder
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.commands import sign as sign_cmd
from edge.config import MqttConfig, SecurityConfig
from edge.mqtt.client import MqttService
from edge.mqtt.outbox import Outbox
from edge.mqtt.signing import sign_request

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")


@pytest.fixture
def server(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    """The trusted server's connection, listening to every reply."""
    probe = mosquitto.probe()
    probe.subscribe(f"{BASE}/reply/#")
    yield probe
    probe.close()


def signed(keys: dict[str, Any], action: str, payload: dict | None = None, **kw: Any) -> dict:
    return sign_request(
        kw.pop("key", keys["key"]),
        kw.pop("device", "door1"),
        kw.pop("topic", f"{BASE}/request/{action}"),
        payload or {},
        **kw,
    )


def ask(
    server: MqttProbe, action: str, msg: dict | bytes, retain: bool = False, rid: Any = None
) -> dict[str, Any]:
    """Publish a request and return the reply with its id."""
    server.publish(f"{BASE}/request/{action}", msg, retain=retain)
    rid = msg["id"] if rid is None and isinstance(msg, dict) else rid
    return server.wait_json(f"{BASE}/reply/{action}", "id", rid)


# ------------------------------------------------------------------ requests and replies


def test_signed_request_reaches_the_handler_and_is_answered(
    make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    _, rec = make_door()
    env = signed(keys, "delete", {"person_id": "alice"})
    reply = ask(server, "delete", env)
    assert reply["status"] == "ok" and reply["error"] is None
    assert reply["result"] == {"action": "delete", "person": "alice"}
    assert reply["time"] > 0
    (action, payload, req) = rec.calls[0]
    assert action == "delete" and payload.person_id == "alice"
    assert req.signed and req.id == env["id"] and req.nonce == env["nonce"]


def _refusal(case: str, keys: dict[str, Any]) -> tuple[dict, bool, str]:
    """(message on request/unlock, retained?, words the reply's error must contain)."""
    now = time.time()
    if case == "unsigned":
        return {"id": "u-1", "payload": {}}, False, "unsigned: unlock requests must be signed"
    if case == "wrong_key":
        return signed(keys, "unlock", key=keys["other"]), False, "unknown key"
    if case == "tampered_payload":
        env = signed(keys, "unlock", {"reason": "visitor"})
        env["payload"]["seconds"] = 60
        return env, False, "bad signature"
    if case == "other_topic":
        return signed(keys, "unlock", topic=f"{BASE}/request/list"), False, "signed for topic"
    if case == "other_device":
        return signed(keys, "unlock", device="door2"), False, "signed for door 'door2'"
    if case == "expired":
        return signed(keys, "unlock", now=now - 60), False, "expired"
    if case == "future":
        return signed(keys, "unlock", now=now + 60), False, "issued in the future"
    if case == "too_long":
        return signed(keys, "unlock", validity_s=3000), False, "longer than the allowed 30 s"
    if case == "retained":
        return signed(keys, "unlock"), True, "retained message"
    raise AssertionError(case)


REFUSAL_CASES = [
    "unsigned",
    "wrong_key",
    "tampered_payload",
    "other_topic",
    "other_device",
    "expired",
    "future",
    "too_long",
    "retained",
]


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_refused_requests_never_reach_the_handler(
    case: str, make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    door, rec = make_door()
    msg, retain, words = _refusal(case, keys)
    reply = ask(server, "unlock", msg, retain=retain)
    assert reply["status"] == "error" and words in reply["error"], reply
    assert reply["result"] is None
    if retain:  # clear the broker's copy (the empty retained message is refused too)
        server.publish(f"{BASE}/request/unlock", b"", retain=True)
        server.wait_for(f"{BASE}/reply/unlock", count=2)
    assert rec.calls == [] and door.alive()


def test_replayed_request_is_refused(
    make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    _, rec = make_door()
    env = signed(keys, "unlock", {"reason": "first"})
    server.publish(f"{BASE}/request/unlock", env)
    server.publish(f"{BASE}/request/unlock", env)
    replies = server.wait_for(f"{BASE}/reply/unlock", count=2)
    assert [r.json()["status"] for r in replies] == ["ok", "error"]
    assert "replayed" in replies[1].json()["error"]
    assert len(rec.calls) == 1


def test_retained_request_waiting_on_the_broker_is_refused_at_start(
    make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    env = signed(keys, "unlock", validity_s=30)
    server.publish(f"{BASE}/request/unlock", env, retain=True)
    _, rec = make_door()  # subscribes after the retained request was stored
    reply = server.wait_json(f"{BASE}/reply/unlock", "id", env["id"])
    assert reply["status"] == "error" and "retained" in reply["error"]
    assert rec.calls == []
    server.publish(f"{BASE}/request/unlock", b"", retain=True)


def test_malformed_json_gets_an_error_reply_with_null_id(
    make_door: Callable[..., Door], server: MqttProbe
) -> None:
    door, rec = make_door()
    server.publish(f"{BASE}/request/enroll", b"\x00{not json")
    reply = server.wait_json(f"{BASE}/reply/enroll", "status", "error")
    assert reply["id"] is None and reply["error"].startswith("not JSON")
    server.publish(f"{BASE}/request/teleport", {"id": "t1", "payload": {}})
    reply = server.wait_json(f"{BASE}/reply/teleport", "id", "t1")
    assert "unknown action 'teleport'" in reply["error"]
    assert rec.calls == [] and door.alive()


def test_list_may_be_unsigned_and_handler_failures_are_replies(
    make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    door, rec = make_door()
    assert ask(server, "list", {"id": "l1", "payload": {}})["status"] == "ok"
    reply = ask(server, "delete", signed(keys, "delete", {"person_id": "nobody"}))
    assert reply["status"] == "error" and reply["error"] == "no such person 'nobody'"
    reply = ask(server, "delete", signed(keys, "delete", {"person_id": "boom"}))
    assert reply["error"] == "internal error: RuntimeError: store exploded"
    reply = ask(server, "delete", signed(keys, "delete", {"person_id": "odd"}))
    assert reply["status"] == "error" and "not JSON" in reply["error"]
    reply = ask(server, "delete", signed(keys, "delete", {"person_id": "list"}))
    assert reply["status"] == "error" and "not a dict" in reply["error"]
    assert len(rec.calls) == 5 and door.alive()


def test_reply_follows_mqtt5_response_topic_and_correlation_data(
    make_door: Callable[..., Door], server: MqttProbe, keys: dict[str, Any]
) -> None:
    make_door()
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{BASE}/reply/custom/42"
    props.CorrelationData = b"corr-42"
    env = signed(keys, "unlock", {"seconds": 2.5})
    server.publish(f"{BASE}/request/unlock", env, properties=props)
    got = server.wait_for(f"{BASE}/reply/custom/42")[0]
    assert got.json()["id"] == env["id"] and got.json()["status"] == "ok"
    assert got.correlation == b"corr-42"


def test_insecure_local_dev_obeys_unsigned_unlock(
    make_door: Callable[..., Door], server: MqttProbe, caplog: pytest.LogCaptureFixture
) -> None:
    _, rec = make_door(security=SecurityConfig(insecure_local_dev=True))
    reply = ask(server, "unlock", {"id": "dev-1", "payload": {"reason": "bench"}})
    assert reply["status"] == "ok" and rec.calls[0][2].insecure
    assert any("INSECURE" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert any("UNSIGNED unlock" in r.getMessage() for r in caplog.records)


def test_home_assistant_lock_command_is_refused(
    make_door: Callable[..., Door], server: MqttProbe
) -> None:
    door, rec = make_door()
    door.publish_lock(True)
    server.subscribe(f"{BASE}/lock")
    server.wait_for(f"{BASE}/lock", lambda m: m.payload == b"LOCKED")
    server.clear()
    server.publish(f"{BASE}/ha/lock/set", b"UNLOCK")
    reply = server.wait_json(f"{BASE}/reply/ha_lock", "status", "error")
    assert "cannot sign" in reply["error"] and f"{BASE}/request/unlock" in reply["error"]
    # the real state is sent again so HA's lock card falls back to it
    server.wait_for(f"{BASE}/lock", lambda m: m.payload == b"LOCKED")
    assert rec.calls == []


def test_sign_command_publishes_and_waits_for_the_reply(
    make_door: Callable[..., Door],
    mosquitto: Mosquitto,
    keys: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, rec = make_door()
    key = tmp_path / "signer.pem"
    key.write_bytes(keys["pem"])
    monkeypatch.setenv("TEST_MQTT_PW", "server-pass")
    ap = argparse.ArgumentParser()
    sign_cmd.register(ap.add_subparsers(dest="command", required=True))
    argv = ["sign", "--key", str(key), "--device", "door1", "--action", "unlock"]
    argv += ["--publish", f"127.0.0.1:{mosquitto.port}", "--username", "server"]
    args = ap.parse_args([*argv, "--password-env", "TEST_MQTT_PW", "--wait", "5"])
    assert args.run(args) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["status"] == "ok" and len(rec.calls) == 1


# ------------------------------------------------------------------ retained topics, discovery


def test_state_and_lock_are_retained(make_door: Callable[..., Door], mosquitto: Mosquitto) -> None:
    door, _ = make_door()
    door.publish_state({"version": 1, "hash": "aa", "count": 1, "model_id": "sface"})
    door.publish_state({"version": 2, "hash": "bb", "count": 3, "model_id": "sface"})
    door.publish_lock(False)
    wait_until(lambda: door.pending() == 0, 5, "the broker to acknowledge state and lock")
    with mosquitto.probe() as late:  # subscribes after the fact: sees the retained values
        late.subscribe(f"{BASE}/state")
        late.subscribe(f"{BASE}/lock")
        state = late.wait_for(f"{BASE}/state")[0]
        lock = late.wait_for(f"{BASE}/lock")[0]
    assert state.retain and state.json()["version"] == 2 and state.json()["count"] == 3
    assert lock.retain and lock.payload == b"UNLOCKED"
    with pytest.raises(ValueError):
        door.publish_state({"version": -1, "hash": "x", "count": 0})


def test_availability_is_retained_and_a_clean_stop_says_offline(
    make_door: Callable[..., Door], mosquitto: Mosquitto
) -> None:
    door, _ = make_door()
    with mosquitto.probe() as p:
        p.subscribe(f"{BASE}/availability")
        first = p.wait_for(f"{BASE}/availability")[0]
        assert first.retain and first.payload == b"online"
        door.stop()
        door.stop()  # idempotent
        p.wait_for(f"{BASE}/availability", lambda m: m.payload == b"offline")
    assert not door.alive() and not door.connected


def test_discovery_configs_are_retained_with_device_and_availability(
    make_door: Callable[..., Door], mosquitto: Mosquitto
) -> None:
    make_door(snapshot=True)
    with mosquitto.probe() as ha:
        ha.subscribe("homeassistant/#")
        got = ha.wait_for("homeassistant/+/maskgate_door1/+/config", count=5)
    configs = {m.topic: m.json() for m in got}
    assert all(m.retain for m in got)
    assert set(configs) == {
        "homeassistant/lock/maskgate_door1/lock/config",
        "homeassistant/event/maskgate_door1/access/config",
        "homeassistant/sensor/maskgate_door1/last_person/config",
        "homeassistant/sensor/maskgate_door1/enrolled_persons/config",
        "homeassistant/image/maskgate_door1/snapshot/config",
    }
    ids = [c["unique_id"] for c in configs.values()]
    assert len(set(ids)) == len(ids)
    for c in configs.values():
        assert c["device"]["identifiers"] == ["maskgate_door1"]
        assert {"name", "model", "manufacturer", "sw_version"} <= c["device"].keys()
        assert c["availability"][0]["topic"] == f"{BASE}/availability"
    lock = configs["homeassistant/lock/maskgate_door1/lock/config"]
    assert lock["command_topic"] == f"{BASE}/ha/lock/set" and lock["state_topic"] == f"{BASE}/lock"
    event = configs["homeassistant/event/maskgate_door1/access/config"]
    assert event["event_types"] == ["unlock", "deny", "lockout"]


def test_snapshot_is_published_only_as_jpeg(
    make_door: Callable[..., Door], mosquitto: Mosquitto
) -> None:
    door, _ = make_door(snapshot=True)
    with mosquitto.probe() as p:
        p.subscribe(f"{BASE}/snapshot")
        assert door.publish_snapshot(b"\xff\xd8\xff\xe0fake-jpeg")
        assert p.wait_for(f"{BASE}/snapshot")[0].payload.startswith(b"\xff\xd8")
    with pytest.raises(ValueError, match="not a JPEG"):
        door.publish_snapshot(b"\x89PNG")


# ------------------------------------------------------------------ last will, crashes, outages

CHILD = """
import json, sys, time
from pathlib import Path
from edge.config import MqttConfig, SecurityConfig
from edge.mqtt.client import MqttService
a = json.loads(sys.argv[1])
svc = MqttService(MqttConfig(**a["mqtt"]), SecurityConfig(), Path(a["state"]), lambda *x: {})
svc.start()
if a["connect"] and not svc.wait_ready(10):
    sys.exit(3)
for i in range(a["events"]):
    svc.publish_event(dict(a["event"], event_id=f"crash-{i:03d}"))
print("ready", svc.pending(), flush=True)
time.sleep(120)
"""


def _event(**kw: Any) -> dict[str, Any]:
    ev = {
        "device": "door1",
        "person": "alice",
        "name": "Alice",
        "score": 0.71,
        "threshold": 0.4,
        "masked": True,
        "liveness": "blink",
        "frames": 5,
        "latency_ms": 140.0,
        "decision": "unlock",
        "reason": "match",
    }
    ev.update(kw)
    return ev


def _child(cfg: MqttConfig, state: Path, connect: bool, events: int = 0) -> subprocess.Popen:
    arg = {
        "mqtt": cfg.model_dump(mode="json") | {"password": cfg.password.get_secret_value()},
        "state": str(state),
        "connect": connect,
        "events": events,
        "event": _event(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(arg)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = _readline(proc, 20)
    if not line.startswith("ready"):
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(f"the child said {line!r}: {err}")
    return proc


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not out:
        proc.kill()
        raise AssertionError(f"the child process said nothing within {timeout} s")
    return out[0]


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def test_last_will_says_offline_when_the_door_process_dies(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    proc = _child(mosquitto.mqtt_config(), tmp_path / "state", connect=True)
    try:
        with mosquitto.probe() as p:
            p.subscribe(f"{BASE}/availability")
            online = p.wait_for(f"{BASE}/availability")[0]
            assert online.retain and online.payload == b"online"
            _kill(proc)  # no DISCONNECT packet: only the broker's last will can tell
            p.wait_for(f"{BASE}/availability", lambda m: m.payload == b"offline", timeout=10)
    finally:
        if proc.poll() is None:
            _kill(proc)
    with mosquitto.probe() as late:
        late.subscribe(f"{BASE}/availability")
        last = late.wait_for(f"{BASE}/availability")[0]
        assert last.retain and last.payload == b"offline"


def test_outbox_survives_a_door_crash_while_the_broker_is_away(
    mosquitto: Mosquitto, tmp_path: Path, make_door: Callable[..., Door]
) -> None:
    n = 25
    state = tmp_path / "crash-state"
    mosquitto.stop()  # the broker is away while the door records events, then the door dies
    proc = _child(mosquitto.mqtt_config(), state, connect=False, events=n)
    _kill(proc)
    box = Outbox(state / "mqtt-outbox.db")
    # On disk, in order, although nothing was ever sent; plus the newest (retained) last person.
    assert [m.topic.rsplit("/", 1)[1] for m in box.pending()] == ["event"] * n + ["last_person"]
    box.close()

    mosquitto.start()
    with mosquitto.probe() as sink:
        sink.subscribe(f"{BASE}/event")
        door, _ = make_door(state_dir=state)  # the restarted door sends what was left
        got = sink.wait_for(f"{BASE}/event", count=n, timeout=15)
        wait_until(lambda: door.pending() == 0, 10, "the outbox to drain")
    ids = [m.json()["event_id"] for m in got]
    assert ids == [f"crash-{i:03d}" for i in range(n)]  # in order, each once


def test_events_survive_a_broker_kill_and_restart_mid_stream(
    tmp_path: Path, make_door: Callable[..., Door]
) -> None:
    n = 60
    broker = Mosquitto(tmp_path / "durable", persistence=True).start()
    sink = MqttProbe(broker, client_id="event-sink", persistent=True).connect()
    try:
        sink.subscribe(f"{BASE}/event", qos=1)
        # the sink's session (with its subscription) must be on disk before the SIGKILL
        wait_until(lambda: (broker.workdir / "mosquitto.db").exists(), 5, "mosquitto autosave")
        door, _ = make_door(broker=broker)
        sent: list[str] = []

        def produce() -> None:
            for i in range(n):
                sent.append(door.publish_event(_event(event_id=f"ev-{i:03d}", frames=i)))
                time.sleep(0.04)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: len(sent) >= 15, 10, "the first events")
        broker.kill()  # SIGKILL mid-stream
        wait_until(lambda: len(sent) >= 35, 10, "events while the broker is down")
        assert not door.ready
        assert door.pending() >= 20  # held in the outbox while the broker is away
        broker.start()  # same port; the door and the sink reconnect by themselves
        producer.join(20)
        received: dict[str, int] = {}

        def all_in() -> bool:
            received.clear()
            for m in sink.messages(f"{BASE}/event"):
                eid = m.json()["event_id"]
                received[eid] = received.get(eid, 0) + 1
            return set(received) >= set(sent)

        wait_until(all_in, 30, "every event at the subscriber")
        assert set(received) == set(sent) and len(sent) == n
        wait_until(lambda: door.pending() == 0, 10, "the outbox to drain")
        duplicates = sum(received.values()) - n
        print(f"{n} events across a broker SIGKILL: all delivered, {duplicates} duplicate(s)")
    finally:
        sink.close()
        broker.stop()


def test_alive_follows_the_connection(make_door: Callable[..., Door], mosquitto: Mosquitto) -> None:
    door, _ = make_door()
    assert door.alive() and door.connected and door.ready
    mosquitto.stop()
    wait_until(lambda: not door.connected, 10, "the door to notice the broker is gone")
    assert door.alive(max_disconnected_s=60)  # a short outage is not a reason to restart
    time.sleep(0.3)
    assert not door.alive(max_disconnected_s=0.2)
    mosquitto.start()
    assert door.wait_ready(10) and door.alive()
    door.stop()
    assert not door.alive()


# ------------------------------------------------------------------ broker security options


def test_tls_with_a_client_certificate_and_password(tmp_path: Path, keys: dict[str, Any]) -> None:
    with running_mosquitto(tmp_path / "tls-broker", tls=True) as broker:
        rec = Recorder()
        door = MqttService(
            broker.mqtt_config(),
            SecurityConfig(trusted_keys=[keys["pub"]]),
            tmp_path / "state",
            rec,
        )
        door.start()
        try:
            assert door.wait_ready(10), broker.log_text()
            with broker.probe() as server:
                server.subscribe(f"{BASE}/reply/#")
                env = signed(keys, "unlock")
                assert ask(server, "unlock", env)["status"] == "ok"
        finally:
            door.stop()
        assert len(rec.calls) == 1


def test_broker_refusals_are_logged_and_the_door_keeps_trying(
    tmp_path: Path, keys: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with running_mosquitto(tmp_path / "tls-broker", tls=True) as broker:
        no_cert = broker.mqtt_config(cert_file=None, key_file=None)
        wrong_password = broker.mqtt_config(password="guess")
        doors = [
            MqttService(cfg, SecurityConfig(), tmp_path / f"s{i}", Recorder())
            for i, cfg in enumerate((no_cert, wrong_password))
        ]
        for door in doors:
            door.start()
        try:

            def seen(words: str) -> bool:
                return any(words in r.getMessage() for r in caplog.records)

            wait_until(
                lambda: seen("dropped before CONNACK") and seen("refused the connection"),
                10,
                "the refused certificate and the refused password in the log",
            )
            wait_until(  # each door tries again after its backoff
                lambda: broker.log_text().count("New connection from") >= 4,
                10,
                "the doors to retry",
            )
            assert not any(d.ready for d in doors)
            assert all(d.alive() for d in doors)  # still running, retrying with backoff
        finally:
            for door in doors:
                door.stop()


def test_missing_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    cfg = MqttConfig(host="127.0.0.1", tls=True, ca_file=tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"mqtt\.ca_file: .*nope\.pem does not exist"):
        MqttService(cfg, SecurityConfig(), tmp_path / "state", Recorder())


def test_publishing_after_stop_is_a_clear_error(make_door: Callable[..., Door]) -> None:
    door, _ = make_door()
    door.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        door.publish_event(_event())
