"""The fleet against simulated doors (the door's own request handlers, template store and MQTT
service) on a real mosquitto with passwords and an ACL: enroll, revoke with confirmation, a door
offline during a change, the broker restarted mid-rollout, two admins at once, a tampered door,
and fleet traffic that is not signed by the fleet's key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import (
    DOOR_PASSWORD,
    DOOR_USER,
    SERVER_PASSWORD,
    SERVER_USER,
    have_mosquitto,
    wait_until,
)
from fleet_site import MODEL_ID, Site, door_lists, embedding

from edge.mqtt.signing import generate_keypair, sign_request
from fleet.registry import RegistryError

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

REPO_ROOT = Path(__file__).resolve().parent.parent
DOORS = ["front", "back", "lab", "dock"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, DOORS)
    try:
        yield s
    finally:
        s.close()


def _seed(site: Site) -> None:
    reg = site.registry
    reg.add_door("front", MODEL_ID, ["staff"])
    reg.add_door("back", MODEL_ID, ["staff"])
    reg.add_door("lab", MODEL_ID, ["lab"])
    reg.add_door("dock", MODEL_ID, ["staff", "lab"])
    reg.add_person("alice", "Alice", ["staff"], [embedding(1)])
    reg.add_person("bob", "Bob", ["staff", "lab"], [embedding(2), embedding(3)])
    reg.add_person("carol", None, ["lab"], [embedding(4)])


EXPECTED = {
    "front": {"alice", "bob"},
    "back": {"alice", "bob"},
    "lab": {"bob", "carol"},
    "dock": {"alice", "bob", "carol"},
}


def test_enroll_revoke_confirmed_and_an_offline_door_converges(site: Site) -> None:
    _seed(site)
    for d in DOORS:
        site.door(d)
    fleet = site.fleet()
    assert fleet.wait_confirmed(None, 20) == []
    with site.broker.probe(username=SERVER_USER, password=SERVER_PASSWORD) as probe:
        for d in DOORS:
            assert door_lists(probe, d) == EXPECTED[d], d  # the door's own answer
        # `back` is offline while bob is revoked.
        site.doors["back"].stop()
        site.wait_online(fleet, "back", False)
        site.registry.update_person("bob", remove_groups=["staff", "lab"])
        t0 = time.monotonic()
        assert fleet.wait_confirmed(["front", "lab", "dock"], 15) == []
        assert time.monotonic() - t0 < 10
        assert fleet.unconfirmed() == ["back"]  # it cannot confirm: it is offline
        for d in ("front", "lab", "dock"):
            assert "bob" not in door_lists(probe, d)
            assert "bob" not in site.held(d)
        assert "bob" in site.held("back")
        # It comes back and converges without anyone asking.
        site.doors["back"].start()
        site.doors["back"].announce()
        t0 = time.monotonic()
        assert fleet.wait_confirmed(["back"], 15) == []
        assert time.monotonic() - t0 < 10
        assert door_lists(probe, "back") == {"alice"}
    # Confirmation is the door's retained hash, recorded in the registry.
    rows = {r.device_id: r for r in site.registry.doors()}
    for d in DOORS:
        assert rows[d].state_hash == fleet.expected[d].hash == rows[d].confirmed_hash
        assert rows[d].flagged is None


def test_a_resent_delete_finding_the_person_gone_is_not_an_error(site: Site) -> None:
    """At least once: after a reconnect (or an answer later than the request's validity) the
    fleet sends a delete again; the door, which already deleted, refuses it. The change holds,
    so that refusal is counted apart from errors, and a real refusal still is one."""
    _seed(site)
    site.door("front")
    fleet = site.fleet()
    assert fleet.wait_confirmed(["front"], 20) == []
    site.registry.update_person("bob", remove_groups=["staff", "lab"])
    assert fleet.wait_confirmed(["front"], 15) == []
    fleet._publish("front", "delete", {"person_id": "bob"})  # what a resend publishes
    fleet._publish("front", "delete", {"person": "bob"})  # malformed: a real refusal

    def answered() -> bool:
        fleet.step()
        return len(fleet.redundant) + len(fleet.errors) >= 2

    wait_until(answered, 10, "the door's answers to both deletes")
    assert [m.split(":")[0] for m in fleet.redundant] == ["front delete"]
    assert len(fleet.errors) == 1 and "person_id" in fleet.errors[0], fleet.errors
    assert site.held("front") == {"alice"}


def test_the_broker_restarted_mid_rollout(site: Site) -> None:
    ids = DOORS
    for d in ids:
        site.registry.add_door(d, MODEL_ID, ["all"])
    for i in range(12):
        site.registry.add_person(f"p{i}", f"P {i}", ["all"], [embedding(100 + i)])
    for d in ids:
        site.door(d)
    fleet = site.fleet()
    restarted: list[int] = []

    def kill_after_two(sent: int) -> None:
        if sent == 2:
            site.broker.restart(kill=True)  # no goodbye: requests in flight are lost
            restarted.append(sent)

    fleet.on_sent = kill_after_two
    assert fleet.wait_confirmed(None, 40) == []
    assert restarted == [2]
    for d in ids:
        assert site.held(d) == {f"p{i}" for i in range(12)}


def test_two_admins_changing_the_registry_at_once(site: Site) -> None:
    site.registry.add_door("front", MODEL_ID, ["a", "b"])
    code = (
        "import sys, numpy as np\n"
        "from fleet.registry import Registry, StoredEmbedding\n"
        "who = sys.argv[1]\n"
        "reg = Registry(sys.argv[2])\n"
        "for i in range(25):\n"
        "    v = np.random.default_rng(hash((who, i)) % 2**32).standard_normal(128)\n"
        "    reg.add_person(f'{who}{i}', None, [who], [StoredEmbedding('sim-128', False, v)])\n"
        "    reg.update_person(f'{who}{i}', name=f'{who} {i}')\n"
    )
    before = site.registry.revision()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, who, str(site.tmp / "fleet.db")], cwd=REPO_ROOT
        )
        for who in ("a", "b")
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    persons = {p["person_id"]: p for p in site.registry.persons()}
    assert len(persons) == 50  # neither admin's change was lost
    assert all(p["name"] is not None for p in persons.values())
    assert site.registry.revision() == before + 100  # every change bumped the revision once
    with pytest.raises(RegistryError, match="exists already"):
        site.registry.add_person("a1", None, ["a"], [embedding(5)])
    site.door("front")
    fleet = site.fleet()
    assert fleet.wait_confirmed(None, 20) == []
    assert site.held("front") == set(persons)


def test_a_tampered_door_is_flagged_and_repaired(site: Site) -> None:
    _seed(site)
    site.door("front")
    fleet = site.fleet()
    assert fleet.wait_confirmed(["front"], 15) == []
    door = site.doors["front"]
    good = fleet.expected["front"].hash
    # Someone adds a person on the door itself (as `edge enroll` beside it would).
    from edge.enroll import ReadyEmbedding, check_embeddings

    extra = check_embeddings([ReadyEmbedding(MODEL_ID, embedding(9).vector, False)], MODEL_ID, 128)
    door.store.enroll("mallory", "Mallory", extra)
    bad = door.templates.changed()["hash"]
    assert bad != good

    def flagged() -> bool:
        fleet.step()
        return fleet.doors["front"].flagged is not None

    wait_until(flagged, 10, "the fleet to flag the door")
    assert bad[:16] in fleet.doors["front"].flagged
    # ...and repaired: the door holds exactly the registry's set again.
    assert fleet.wait_confirmed(["front"], 15) == []
    assert "mallory" not in site.held("front")
    fleet.flush(force=True)
    row = next(r for r in site.registry.doors() if r.device_id == "front")
    assert row.flagged is not None and row.confirmed_time >= row.flagged_time


def test_a_door_reporting_a_hash_it_was_never_sent_is_flagged(site: Site) -> None:
    _seed(site)
    door = site.door("front")
    fleet = site.fleet()
    assert fleet.wait_confirmed(["front"], 15) == []
    good = fleet.expected["front"].hash
    # A state the door never computed, published with the door's own broker account.
    fake = {"version": 99, "hash": "0" * 64, "count": 2, "model_id": MODEL_ID}
    with site.broker.probe(username=DOOR_USER, password=DOOR_PASSWORD) as impostor:
        impostor.publish("maskgate/front/state", fake, retain=True)

    def flagged() -> bool:
        fleet.step()
        return fleet.doors["front"].flagged is not None

    wait_until(flagged, 10, "the fleet to flag the door")
    assert "0000000000000000" in fleet.doors["front"].flagged
    # The re-sync makes the door announce its real state again: confirmed, nothing changed.
    assert fleet.wait_confirmed(["front"], 15) == []
    assert door.templates.state()["hash"] == good


def test_what_a_door_held_before_the_fleet_is_replaced_not_flagged(site: Site) -> None:
    _seed(site)
    door = site.door("back")
    from edge.enroll import ReadyEmbedding, check_embeddings

    old = check_embeddings([ReadyEmbedding(MODEL_ID, embedding(8).vector, False)], MODEL_ID, 128)
    door.store.enroll("former", None, old)  # enrolled locally, before the site had a fleet
    door.templates.changed()
    fleet = site.fleet()
    assert fleet.wait_confirmed(["back"], 15) == []
    assert site.held("back") == EXPECTED["back"]
    assert fleet.doors["back"].flagged is None


def test_fleet_traffic_not_signed_by_the_fleet_key_is_ignored(site: Site) -> None:
    _seed(site)
    door = site.door("front")
    fleet = site.fleet()
    assert fleet.wait_confirmed(["front"], 15) == []
    before = door.templates.state()
    other, _ = generate_keypair()
    topic = "maskgate/front/request/sync"
    forged = sign_request(other, "front", topic, {"persons": []})
    unsigned = {"id": "u1", "payload": {"persons": []}}
    with site.broker.probe(username=SERVER_USER, password=SERVER_PASSWORD) as probe:
        probe.subscribe("maskgate/front/reply/#")
        for env, why in ((forged, "unknown key"), (unsigned, "unsigned")):
            probe.publish(topic, env)
            reply = probe.wait_json("maskgate/front/reply/sync", "id", env["id"], timeout=10)
            assert reply["status"] == "error" and why in reply["error"], reply
        dele = sign_request(other, "front", "maskgate/front/request/delete", {"person_id": "bob"})
        probe.publish("maskgate/front/request/delete", dele)
        reply = probe.wait_json("maskgate/front/reply/delete", "id", dele["id"], timeout=10)
        assert reply["status"] == "error" and "unknown key" in reply["error"]
    assert door.templates.state() == before
    assert site.held("front") == {"alice", "bob"}


def _cli(site: Site, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", "-c", str(site.config_file), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_command_line_from_init_to_revoke(site: Site, tmp_path: Path) -> None:
    out = _cli(site, "init")
    assert out.returncode == 0, out.stderr
    assert site.pub in out.stdout  # the key the doors trust (kept, not replaced)
    for d in ("front", "back"):
        assert _cli(site, "door", "add", d, "--model-id", MODEL_ID).returncode == 0
    emb = tmp_path / "alice.json"
    emb.write_text(json.dumps([{"model_id": MODEL_ID, "vector": embedding(1).vector.tolist()}]))
    out = _cli(
        site,
        "person",
        "add",
        "alice",
        "--name",
        "Alice",
        "--group",
        "staff",
        "--embeddings",
        str(emb),
    )
    assert out.returncode == 0, out.stderr
    out = _cli(site, "group", "grant", "staff", "front", "back")
    assert out.returncode == 0, out.stderr
    bad = _cli(site, "group", "grant", "staff", "nowhere")
    assert bad.returncode == 1 and "no door 'nowhere'" in bad.stderr
    for d in ("front", "back"):
        site.door(d)
    out = _cli(site, "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "confirmed: 2 of 2 doors" in out.stdout
    assert all(site.held(d) == {"alice"} for d in ("front", "back"))
    # One door goes away: revoke says which door has not confirmed, and fails.
    site.doors["back"].stop()
    out = _cli(site, "revoke", "alice", "--timeout", "4")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "confirmed: 1 of 2 doors" in out.stdout and "NOT CONFIRMED back: offline" in out.stdout
    assert site.held("front") == set()
    listing = json.loads(_cli(site, "door", "list", "--json").stdout)
    drift = {r["device_id"]: r["drift"] for r in listing}
    assert drift == {"front": "in sync", "back": "behind"}
    events = _cli(site, "events", "--door", "front", "--json")
    kinds = [json.loads(x)["body"].get("action") for x in events.stdout.splitlines()]
    assert "sync" in kinds and "delete" in kinds  # the door's audit records, stored
