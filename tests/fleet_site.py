"""A small site for the fleet tests: a real mosquitto (door and fleet users, an ACL covering
every door), a registry in a SQLite file, the fleet's loop, and simulated doors made of the
door's own request handlers, template store and MQTT service (fleet.simdoors).

    from fleet_site import Site      # inside tests/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from broker import DOOR_PASSWORD, DOOR_USER, FLEET_PASSWORD, FLEET_USER, Mosquitto, wait_until

from edge.mqtt.signing import load_private_key
from fleet.config import FleetConfig
from fleet.keys import create_key
from fleet.link import Link
from fleet.reconcile import Fleet
from fleet.registry import Registry, StoredEmbedding
from fleet.simdoors import SimDoor

MODEL_ID = "sim-128"
DIM = 128


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype("<f4")


def embedding(seed: int, model_id: str = MODEL_ID) -> StoredEmbedding:
    return StoredEmbedding(model_id, False, vector(seed))


class Site:
    def __init__(self, tmp: Path, doors: list[str]) -> None:
        self.tmp = tmp
        self.broker = Mosquitto(tmp / "broker", devices=doors).start()
        self.pub, _ = create_key(tmp / "fleet-key.pem")
        self.key = load_private_key(tmp / "fleet-key.pem")
        self.registry = Registry(tmp / "fleet.db")
        self.config_file = tmp / "fleet.yaml"
        self.config_file.write_text(
            json.dumps(
                {
                    "registry": "fleet.db",
                    "key_file": "fleet-key.pem",
                    "broker": {
                        "host": self.broker.host,
                        "port": self.broker.port,
                        "username": FLEET_USER,
                        "password": FLEET_PASSWORD,
                    },
                    "timing": {"resend_s": 2.0},
                }
            )
        )
        self.cfg = FleetConfig.model_validate(
            json.loads(self.config_file.read_text()) | {"base_dir": str(tmp)}
        )
        self.doors: dict[str, SimDoor] = {}
        self.links: list[Link] = []

    def door(self, device_id: str, model_id: str = MODEL_ID) -> SimDoor:
        spec = {
            "host": self.broker.host,
            "port": self.broker.port,
            "prefix": "maskgate",
            "model_id": model_id,
            "dim": DIM,
            "trusted_key": self.pub,
            "username": DOOR_USER,
            "password": DOOR_PASSWORD,
        }
        d = SimDoor(device_id, self.tmp / "doors" / device_id, b"k" * 32, spec)
        d.start()
        assert d.mqtt is not None and d.mqtt.wait_ready(10), f"{device_id} did not connect"
        d.announce()
        self.doors[device_id] = d
        return d

    def fleet(self) -> Fleet:
        link = Link(self.cfg.broker, client_id=f"fleet-test-{len(self.links)}")
        link.start()
        assert link.wait_connected(10), "the fleet did not connect"
        self.links.append(link)
        fleet = Fleet(self.registry, link, self.key, self.cfg.timing)
        fleet.reload(force=True)
        return fleet

    def held(self, device_id: str) -> set[str]:
        """What the door's own store holds."""
        return {p.person_id for p in self.doors[device_id].store.list()}

    def wait_online(self, fleet: Fleet, device_id: str, online: bool) -> None:
        def check() -> bool:
            fleet.step()
            d = fleet.doors.get(device_id)
            return d is not None and d.online == online and d.hash is not None

        wait_until(check, 10, f"{device_id} {'online' if online else 'offline'} at the fleet")

    def close(self) -> None:
        for link in self.links:
            link.stop()
        for d in self.doors.values():
            d.stop()
            d.store.close()
        self.registry.close()
        self.broker.stop()


def door_lists(probe: Any, device_id: str) -> set[str]:
    """The door's answer to an unsigned `list` request: the ids it holds, in its own words."""
    import uuid

    rid = uuid.uuid4().hex
    probe.subscribe(f"maskgate/{device_id}/reply/list")
    probe.publish(f"maskgate/{device_id}/request/list", {"id": rid, "payload": {}})
    reply = probe.wait_json(f"maskgate/{device_id}/reply/list", "id", rid, timeout=10)
    assert reply["status"] == "ok", reply
    return {p["person_id"] for p in reply["result"]["persons"]}
