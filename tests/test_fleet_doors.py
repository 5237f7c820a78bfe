"""The fleet with real doors: two `python -m edge run` processes (folder cameras, mock relays)
and `maskgate-fleet watch`, all on a real mosquitto with passwords and an ACL. A person enrolled
from a photo (embedded on the server by the door's pipeline) reaches both doors; a revocation
is confirmed by the online door and reported unconfirmed for the offline one, which converges
when it comes back without anyone asking."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import (
    DOOR_PASSWORD,
    FLEET_PASSWORD,
    FLEET_USER,
    SERVER_PASSWORD,
    SERVER_USER,
    Mosquitto,
    have_mosquitto,
    wait_until,
)
from fleet_site import door_lists
from service import DoorProcess

from edge.config import load_config
from edge.demo import ENROLL, PHOTOS

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

REPO_ROOT = Path(__file__).resolve().parent.parent
DOORS = ("door1", "door2")


def door_config(tmp: Path, broker: Mosquitto, device_id: str, pub: str, camera: dict[str, Any]):
    base = load_config()
    return {
        "models": base.models.model_dump(mode="json")
        | {"manifest": str(base.resolve(base.models.manifest))},
        "match": base.match.model_dump(),
        "camera": camera,
        "mqtt": broker.mqtt_config().model_dump(mode="json")
        | {"password": DOOR_PASSWORD, "device_id": device_id, "discovery": False},
        "security": {"trusted_keys": [pub]},
        "relay": {"type": "mock", "pulse_s": 0.3, "mock_log": "relay.jsonl"},
        "daemon": {"state_dir": str(tmp / device_id / "state")},
    }


def fleet_cli(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", "-c", str(cfg), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", devices=list(DOORS)) as b:
        yield b


def test_real_doors_enroll_revoke_and_converge(
    tmp_path: Path, broker: Mosquitto, test_data: Path
) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        json.dumps(
            {
                "broker": {
                    "host": broker.host,
                    "port": broker.port,
                    "username": FLEET_USER,
                    "password": FLEET_PASSWORD,
                },
                "timing": {"resend_s": 2.0},
            }
        )
    )
    out = fleet_cli(cfg, "init")
    assert out.returncode == 0, out.stderr
    pub = out.stdout.strip().splitlines()[-1]
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(test_data / "insightface/mask_blue.jpg", folder / "wall.jpg")
    camera = {"type": "folder", "path": str(folder), "loop": True, "fps": 5}
    doors = {
        d: DoorProcess(door_config(tmp_path, broker, d, pub, camera), tmp_path / d) for d in DOORS
    }
    watch = None
    try:
        for door in doors.values():
            door.start()
        # Meanwhile the site is set up: doors, a group, a person from a photo, one from an
        # embedding file.
        model_id = load_config().models.embedder
        for d in DOORS:
            out = fleet_cli(cfg, "door", "add", d, "--model-id", model_id, "--group", "staff")
            assert out.returncode == 0, out.stderr
        out = fleet_cli(
            cfg, "person", "add", "obama", "--name", "Barack", "--group", "staff",
            "--photo", str(PHOTOS / ENROLL[0]),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        vec = np.random.default_rng(1).standard_normal(128).tolist()
        emb = tmp_path / "bob.json"
        emb.write_text(json.dumps([{"model_id": model_id, "vector": vec}]))
        out = fleet_cli(cfg, "person", "add", "bob", "--group", "staff", "--embeddings", str(emb))
        assert out.returncode == 0, out.stderr
        for door in doors.values():
            door.wait_ready()
        watch = subprocess.Popen(
            [sys.executable, "-m", "fleet", "-c", str(cfg), "watch"],
            cwd=REPO_ROOT,
            stderr=(tmp_path / "watch.log").open("wb"),
        )

        def drift() -> dict[str, str]:
            rows = json.loads(fleet_cli(cfg, "door", "list", "--json").stdout)
            return {r["device_id"]: r["drift"] for r in rows}

        wait_until(lambda: drift() == dict.fromkeys(DOORS, "in sync"), 60, "both doors in sync")
        with broker.probe(username=SERVER_USER, password=SERVER_PASSWORD) as probe:
            for d in DOORS:
                assert door_lists(probe, d) == {"obama", "bob"}

            # door2 goes down; bob is revoked: door1 confirms, door2 is named as unconfirmed.
            assert doors["door2"].signal(signal.SIGTERM) == 0
            out = fleet_cli(cfg, "revoke", "bob", "--timeout", "6")
            assert out.returncode == 3, out.stdout + out.stderr
            assert "confirmed: 1 of 2 doors" in out.stdout
            assert "NOT CONFIRMED door2: offline" in out.stdout
            assert door_lists(probe, "door1") == {"obama"}

            # door2 returns; the watch service brings it in line within seconds.
            doors["door2"].start()
            doors["door2"].wait_ready()
            t0 = time.monotonic()
            wait_until(lambda: drift()["door2"] == "in sync", 30, "door2 to converge")
            assert time.monotonic() - t0 < 15
            assert door_lists(probe, "door2") == {"obama"}
        events = fleet_cli(cfg, "events", "--door", "door2", "--json").stdout.splitlines()
        assert any(json.loads(e)["kind"] == "audit" for e in events)
    finally:
        if watch is not None:
            watch.send_signal(signal.SIGTERM)
            assert watch.wait(20) == 0, (tmp_path / "watch.log").read_text()
        for door in doors.values():
            door.stop()
