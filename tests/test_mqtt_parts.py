"""The MQTT building blocks on their own: topics, the SQLite outbox, discovery payloads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edge.mqtt.discovery import discovery_configs
from edge.mqtt.outbox import Outbox, OutboxError
from edge.mqtt.topics import Topics


def test_topic_layout() -> None:
    t = Topics("maskgate", "door1")
    assert t.request("unlock") == "maskgate/door1/request/unlock"
    assert t.request_filter == "maskgate/door1/request/+"
    assert t.reply("enroll") == "maskgate/door1/reply/enroll"
    assert (t.availability, t.state, t.lock) == (
        "maskgate/door1/availability",
        "maskgate/door1/state",
        "maskgate/door1/lock",
    )
    assert (t.event, t.audit, t.snapshot) == (
        "maskgate/door1/event",
        "maskgate/door1/audit",
        "maskgate/door1/snapshot",
    )
    assert t.ha_lock_set == "maskgate/door1/ha/lock/set"
    assert t.discovery("lock", "lock") == "homeassistant/lock/maskgate_door1/lock/config"
    assert t.action_of("maskgate/door1/request/sync") == "sync"
    for other in ("maskgate/door2/request/sync", "maskgate/door1/request/", "x/y"):
        assert t.action_of(other) is None
    assert Topics("site/a.b", "d-1").node_id == "site_a_b_d-1"


@pytest.mark.parametrize(
    ("prefix", "device", "discovery"),
    [
        ("a/#", "d", "homeassistant"),
        ("a", "d/e", "homeassistant"),
        ("a", "+", "ha"),
        ("", "d", "ha"),
        ("a", "d", "ha/+"),
    ],
)
def test_topics_refuse_wildcards(prefix: str, device: str, discovery: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix, device, discovery)


def test_outbox_keeps_order_across_reopen_and_removes_acked(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path)
    ids = [box.put("t/event", f"e{i}".encode()) for i in range(5)]
    box.remove(ids[1])
    box.close()
    box = Outbox(path)  # a restart: what was not acknowledged is still there, in order
    assert [m.payload for m in box.pending()] == [b"e0", b"e2", b"e3", b"e4"]
    assert all(m.qos == 1 and not m.retain for m in box.pending())
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()


def test_outbox_coalesces_retained_topics_and_stays_bounded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=3)
    box.put("t/state", b"v1", retain=True, coalesce=True)
    box.put("t/event", b"e1")
    box.put("t/state", b"v2", retain=True, coalesce=True)
    assert [(m.topic, m.payload) for m in box.pending()] == [("t/event", b"e1"), ("t/state", b"v2")]
    for i in range(3):
        box.put("t/event", f"x{i}".encode())
    assert [m.payload for m in box.pending()] == [b"x0", b"x1", b"x2"]  # the oldest went
    with pytest.raises(ValueError):
        box.put("t", b"", qos=3)
    box.close()


def test_outbox_is_safe_from_several_threads(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")

    def writer(k: int) -> None:
        for i in range(50):
            oid = box.put("t", f"{k}-{i}".encode())
            if i % 2:
                box.remove(oid)  # acknowledged, as the network thread does meanwhile

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    left = [m.payload.decode() for m in box.pending()]
    assert sorted(left) == sorted(f"{k}-{i}" for k in range(4) for i in range(0, 50, 2))
    box.close()


def test_outbox_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="not-a-db"):
        Outbox(bad)


def test_discovery_payloads_share_device_and_availability() -> None:
    t = Topics("maskgate", "door1")
    configs = dict(discovery_configs(t, "1.2.3"))
    assert len(configs) == 4  # no image entity unless snapshots are on
    assert len(discovery_configs(t, "1.2.3", snapshot=True)) == 5
    for conf in configs.values():
        assert conf["device"]["sw_version"] == "1.2.3"
        assert conf["availability"] == [
            {
                "topic": t.availability,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        assert conf["unique_id"].startswith("maskgate_door1_")
    count = configs[t.discovery("sensor", "enrolled_persons")]
    assert count["state_topic"] == t.state and "count" in count["value_template"]
