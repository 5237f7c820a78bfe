"""The fleet's settings and registry file on their own: config tables, migrations, refusals,
and what each door is expected to hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fleet.config import FleetConfigError, load_fleet_config
from fleet.registry import Registry, RegistryError, StoredEmbedding
from fleet.schema import SCHEMA_VERSION


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(128).astype("<f4")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("registry: r.db\nbroker: {port: 1883}\n", None),
        ("timing: {resend_s: 2, max_syncs_in_flight: 10}\n", None),
        ("brokr: {}\n", "brokr: Extra inputs are not permitted"),
        ("broker: {port: 70000}\n", "broker.port: Input should be less than or equal to 65535"),
        ("timing: {resend_s: 0}\n", "timing.resend_s: Input should be greater than 0"),
        ("timing: {max_syncs_in_flight: 0}\n", "timing.max_syncs_in_flight"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_fleet_config_table(tmp_path: Path, text: str, error: str | None) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    if error is None:
        cfg = load_fleet_config(path)
        assert cfg.resolve(cfg.registry).parent == tmp_path  # relative to the file
    else:
        with pytest.raises(FleetConfigError, match=error.replace("(", r"\(")):
            load_fleet_config(path)


def test_registry_migrates_once_and_refuses_a_newer_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    Registry(path).close()
    assert path.stat().st_mode & 0o077 == 0  # names and embeddings are personal data
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    Registry(path).close()  # nothing to do the second time
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this fleet"):
        Registry(path)
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RegistryError, match="not a fleet registry"):
        Registry(tmp_path / "junk.db")


def test_expectations_follow_groups_and_models(tmp_path: Path) -> None:
    with Registry(tmp_path / "fleet.db") as reg:
        reg.add_door("a", "m1", ["staff"])
        reg.add_door("b", "m2", ["staff", "lab"])
        reg.add_person("ann", "Ann", ["staff"], [StoredEmbedding("m1", False, vec(1))])
        both = [StoredEmbedding("m2", True, vec(2)), StoredEmbedding("m1", False, vec(3))]
        reg.add_person("bo", None, ["lab"], both)
        exp = reg.expectations()
        assert exp["a"][0] == "m1" and set(exp["a"][1]) == {"ann"}
        # b runs m2: ann has no m2 embedding, so she is not sent there; bo is (lab).
        assert set(exp["b"][1]) == {"bo"}
        assert [e.model_id for e in exp["b"][1]["bo"].embeddings] == ["m2"]
        rev = reg.revision()
        reg.update_person("ann", remove_groups=["staff"])
        assert reg.revision() == rev + 1 and reg.expectations()["a"][1] == {}
        with pytest.raises(RegistryError, match="exists already"):
            reg.add_person("ann", None, [], [StoredEmbedding("m1", False, vec(4))])
        with pytest.raises(RegistryError, match="no door 'zz'"):
            reg.grant("staff", ["zz"])
        with pytest.raises(RegistryError, match="person id 'a b'"):
            reg.add_person("a b", None)
        with pytest.raises(RegistryError, match="finite"):
            reg.add_person("nan", None, [], [StoredEmbedding("m1", False, np.full(128, np.nan))])
        assert not reg.has_person("nan")  # the failed add left nothing behind


def test_people_no_door_would_take_are_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    """The doors' own rules, at the registry: a person a door refuses would never confirm
    (and, before this check, stopped the fleet's loop computing the door's hash)."""
    ok = [StoredEmbedding("m1", False, vec(1))]
    with Registry(tmp_path / "fleet.db") as reg:
        reg.add_person("ann", "Ann", ["staff"], ok)
        reg.add_person("bo", None, ["staff"], [StoredEmbedding("m1", False, vec(9))])
        rev = reg.revision()
        cases = [
            ("long", "x" * 300, ok, "name"),  # the request model takes 128 characters
            ("ctl", "Bo\x07", ok, "control characters"),
            ("zero", None, [StoredEmbedding("m1", False, np.zeros(128, "<f4"))], "all zeros"),
            ("short", None, [StoredEmbedding("m1", False, vec(2)[:64])], r"\[64, 128\] values"),
            ("many", None, [StoredEmbedding("m1", False, vec(i)) for i in range(51)], "50"),
        ]
        for pid, name, embs, why in cases:
            with pytest.raises(RegistryError, match=why):
                reg.add_person(pid, name, ["staff"], embs)
            assert not reg.has_person(pid), pid
        with pytest.raises(RegistryError, match="name"):
            reg.update_person("ann", name="y" * 300)
        mixed = [StoredEmbedding("m1", True, vec(3)[:100])]  # bo's m1 vectors have 128
        with pytest.raises(RegistryError, match="one model makes one size"):
            reg.update_person("ann", embeddings=mixed)
        assert reg.revision() == rev  # every refused change was rolled back
        assert [(p["person_id"], p["name"]) for p in reg.persons()] == [
            ("ann", "Ann"),
            ("bo", None),
        ]


def test_revoke_takes_every_group_in_one_write(tmp_path: Path) -> None:
    with Registry(tmp_path / "fleet.db") as reg:
        reg.add_person("ann", None, ["staff"], [StoredEmbedding("m1", False, vec(1))])
        reg.update_person("ann", add_groups=["lab"])  # granted after an admin looked
        rev = reg.revision()
        assert reg.revoke_person("ann") == ["lab", "staff"]
        assert reg.persons()[0]["groups"] == [] and reg.revision() == rev + 1
        with pytest.raises(RegistryError, match="no person 'bob'"):
            reg.revoke_person("bob")


def test_events_are_the_newest_printed_oldest_first(tmp_path: Path) -> None:
    with Registry(tmp_path / "fleet.db") as reg:
        reg.add_door("front", "m1", ["staff"])
        events = [
            {"event_id": f"e{i}", "device_id": "front", "time": 1000.0 + i, "kind": "event",
             "person": None, "decision": "deny", "body": {"i": i}}
            for i in range(5)
        ]  # fmt: skip
        reg.record(events=events)
        assert [e["body"]["i"] for e in reg.events(limit=3)] == [2, 3, 4]
        assert [e["body"]["i"] for e in reg.events(since=1001.0)] == [1, 2, 3, 4]


def test_the_set_a_door_last_reported_stays_known_through_many_changes(tmp_path: Path) -> None:
    """A door offline while the fleet sent more sets than it keeps comes back holding the one
    it last reported: known, so behind rather than flagged as tampered with."""
    with Registry(tmp_path / "fleet.db") as reg:
        reg.add_door("back", "m1", ["staff"])
        reg.record(hashes=[("back", "h-held")])
        state = {
            "device_id": "back", "online": 1, "last_seen": 1.0, "version": 3, "hash": "h-held",
            "count": 1, "state_time": 1.0, "confirmed_hash": "h-held", "confirmed_time": 1.0,
            "flagged": None, "flagged_time": None, "last_event": None,
        }  # fmt: skip
        reg.record(states=[state])
        reg.record(hashes=[("back", f"h{i}") for i in range(100)])
        known = reg.known_hashes("back")
        assert "h-held" in known and len(known) == 65, sorted(known)[:5]  # 64 newest + held
