"""What Home Assistant sees, with a real mosquitto and the door's real MQTT service: a subscriber
that behaves as HA does (clean session, subscribes to the discovery prefix and the door's topics,
announces itself with the birth message), broker restarts without persistence, stale entities,
the last-person sensor for each decision kind, and HA's refused lock commands in the audit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, MqttProbe, wait_until
from mqtt_door import BASE, Door

from edge.mqtt.discovery import last_person_state

NODE = "maskgate_door1"
CONFIGS = {
    f"homeassistant/lock/{NODE}/lock/config",
    f"homeassistant/event/{NODE}/access/config",
    f"homeassistant/sensor/{NODE}/last_person/config",
    f"homeassistant/sensor/{NODE}/enrolled_persons/config",
}
SNAPSHOT = f"homeassistant/image/{NODE}/snapshot/config"


def event(**kw: Any) -> dict[str, Any]:
    ev = {
        "device": "door1",
        "person": "ann",
        "name": "Ann",
        "score": 0.71,
        "threshold": 0.43,
        "masked": True,
        "liveness": "blink",
        "frames": 3,
        "latency_ms": 140.0,
        "decision": "unlock",
        "reason": "3 of 3 frames",
    }
    return ev | kw


@pytest.fixture
def ha(mosquitto: Mosquitto) -> Iterator[MqttProbe]:
    """Home Assistant's MQTT integration: a clean session on the discovery prefix and the door."""
    probe = mosquitto.probe()
    probe.subscribe("homeassistant/#")
    probe.subscribe(f"{BASE}/#")
    yield probe
    probe.close()


def configs_in(probe: MqttProbe) -> dict[str, bytes]:
    """The newest payload of each discovery config topic the probe received."""
    out: dict[str, bytes] = {}
    for m in probe.messages("homeassistant/+/+/+/config"):
        out[m.topic] = m.payload
    return out


def test_a_broker_restart_without_persistence_gets_state_and_lock_back(
    make_door: Callable[..., Door], mosquitto: Mosquitto
) -> None:
    door, _ = make_door()
    door.publish_state({"version": 7, "hash": "ab" * 32, "count": 2, "model_id": "sface"})
    door.publish_lock(True)
    door.publish_event(event())
    wait_until(lambda: door.pending() == 0, 5, "the broker to acknowledge")
    mosquitto.restart()  # mosquitto's default: no persistence, every retained message gone
    wait_until(lambda: door.ready, 15, "the door to reconnect")
    started = time.monotonic()
    with mosquitto.probe() as late:  # HA restarting after the broker: only retained values
        late.subscribe(f"{BASE}/#")
        for topic in ("state", "lock", "availability", "last_person"):
            late.wait_for(f"{BASE}/{topic}", lambda m: m.retain and m.payload, timeout=5)
        state = late.wait_for(f"{BASE}/state")[0].json()
        lock = late.wait_for(f"{BASE}/lock")[0].payload
        person = late.wait_for(f"{BASE}/last_person")[0].json()
    assert time.monotonic() - started < 5
    assert state["version"] == 7 and state["count"] == 2
    assert lock == b"LOCKED" and person["state"] == "Ann"


def test_the_birth_message_republishes_configs_availability_lock_and_state(
    make_door: Callable[..., Door], ha: MqttProbe
) -> None:
    door, _ = make_door(snapshot=True)
    door.publish_state({"version": 3, "hash": "cd" * 32, "count": 1, "model_id": "sface"})
    door.publish_lock(True)
    ha.wait_for("homeassistant/+/+/+/config", lambda m: m.payload, count=5)
    ha.wait_for(f"{BASE}/state")
    time.sleep(0.3)  # the first announcement (and its clearing of old configs) is through
    ha.clear()
    ha.publish("homeassistant/status", b"online")  # HA (re)started
    got = ha.wait_for("homeassistant/+/+/+/config", lambda m: m.payload, count=5, timeout=5)
    assert {m.topic for m in got} == CONFIGS | {SNAPSHOT}
    ha.wait_for(f"{BASE}/availability", lambda m: m.payload == b"online", timeout=5)
    ha.wait_for(f"{BASE}/lock", lambda m: m.payload == b"LOCKED", timeout=5)
    assert ha.wait_for(f"{BASE}/state", timeout=5)[0].json()["version"] == 3
    # HA going offline is not a reason to publish anything
    ha.clear()
    ha.publish("homeassistant/status", b"offline")
    time.sleep(0.5)
    assert ha.messages("homeassistant/+/+/+/config") == []
    assert ha.messages(f"{BASE}/state") == []


def test_configs_the_door_no_longer_wants_are_cleared(
    make_door: Callable[..., Door], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    first, _ = make_door(snapshot=True)
    wait_until(lambda: first.pending() == 0, 5, "configs acknowledged")
    first.stop()
    with mosquitto.probe() as p:
        p.subscribe("homeassistant/#")
        p.wait_for("homeassistant/+/+/+/config", count=5)
        assert set(configs_in(p)) == CONFIGS | {SNAPSHOT}  # retained from the first door
    # Restarted without snapshots: the image entity goes, the others stay.
    second, _ = make_door(snapshot=False, state_dir=tmp_path / "s2")
    time.sleep(0.5)
    with mosquitto.probe() as p:
        p.subscribe("homeassistant/#")
        time.sleep(0.5)
        assert {t for t, v in configs_in(p).items() if v} == CONFIGS
    second.stop()
    # Restarted with discovery off: every config of this door is cleared.
    make_door(discovery=False, state_dir=tmp_path / "s3")
    time.sleep(0.5)
    with mosquitto.probe() as p:
        p.subscribe("homeassistant/#")
        time.sleep(0.5)
        assert {t for t, v in configs_in(p).items() if v} == set()


@pytest.mark.parametrize(
    ("ev", "state", "face"),
    [
        (event(), "Ann", True),
        (event(name=None), "ann", True),
        (
            event(decision="deny", person=None, name=None, reason="no enrolled person matched"),
            "stranger",
            True,
        ),
        (
            event(decision="deny", reason="no blink or head movement (liveness)"),
            "no liveness",
            True,
        ),
        (event(decision="lockout", person=None, name=None, reason="5 failed"), "lockout", True),
        (
            event(
                person=None,
                name=None,
                score=None,
                threshold=None,
                masked=None,
                liveness=None,
                frames=0,
                latency_ms=0.0,
                reason="remote unlock: courier",
            ),
            "remote:courier",
            False,
        ),
    ],
)
def test_the_last_person_sensor_says_what_happened(
    make_door: Callable[..., Door],
    mosquitto: Mosquitto,
    ha: MqttProbe,
    ev: dict[str, Any],
    state: str,
    face: bool,
) -> None:
    door, _ = make_door()
    event_id = door.publish_event(ev)
    payload = ha.wait_for(f"{BASE}/last_person", lambda m: m.payload, timeout=5)[-1].json()
    assert payload["state"] == state and payload["state"] != "unknown"
    assert payload["event_id"] == event_id and payload["decision"] == ev["decision"]
    assert payload == last_person_state({**ev, "event_id": event_id, "time": payload["time"]})
    if not face:  # no face was seen: no face fields
        assert payload["score"] is None and payload["masked"] is None
    wait_until(lambda: door.pending() == 0, 5, "the broker to acknowledge")
    with mosquitto.probe() as late:  # retained: a restarted HA shows it at once
        late.subscribe(f"{BASE}/last_person")
        assert late.wait_for(f"{BASE}/last_person")[0].json()["state"] == state


def test_a_refused_home_assistant_unlock_is_audited(
    make_door: Callable[..., Door], ha: MqttProbe
) -> None:
    _, rec = make_door()
    ha.publish(f"{BASE}/ha/lock/set", b"UNLOCK")
    audit = ha.wait_for(f"{BASE}/audit", timeout=5)[0].json()
    assert audit["action"] == "ha_lock" and audit["status"] == "error"
    assert "cannot sign" in audit["error"] and audit["signed"] is False
    assert rec.calls == []
