"""The door service end to end: a real mosquitto with passwords and an ACL, a real encrypted
store, the real pipeline, the mock relay (the only stand-in: no GPIO chip here), and camera
clips made of real photos."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, have_mosquitto, wait_until
from running_door import RunningDoor, door_config, pulses, request

from edge.demo import ENROLL, PHOTOS, make_clip
from edge.mqtt.signing import generate_keypair, sign_request
from edge.relay.mock import state_file

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", device_id="door1") as b:
        yield b


def test_enroll_over_mqtt_then_unlock_masked_and_unmasked_never_a_stranger(
    tmp_path: Path, broker: Mosquitto, test_data: Path
) -> None:
    marks = make_clip(tmp_path / "clip")
    key, pub = generate_keypair()
    cfg = door_config(
        tmp_path, broker, pub, {"type": "folder", "path": str(tmp_path / "clip"), "fps": 10}
    )
    with broker.probe() as server, RunningDoor(cfg) as running:
        server.subscribe("maskgate/door1/#")
        images = [base64.b64encode((PHOTOS / p).read_bytes()).decode() for p in ENROLL]
        reply = request(server, key, "enroll", {"person_id": "barack", "images": images})
        assert reply["status"] == "ok", reply
        assert reply["result"]["templates"] >= 4  # two photos + their synthetic masked variants
        state = server.wait_json("maskgate/door1/state", "count", 1)
        assert state["model_id"] == "sface_int8" and state["version"] >= 1
        running.gate.set()
        running.thread.join(90)  # the clip ends, the door stops (exit_at_end)
        events = [m.json() for m in server.wait_for("maskgate/door1/event", count=4, timeout=10)]
    decisions = [(e["decision"], e["person"]) for e in events]
    assert decisions == [
        ("unlock", "barack"),
        ("unlock", "barack"),
        ("deny", "barack"),  # his photos held up one after another: no liveness
        ("deny", None),  # the stranger
    ], (marks, events)
    assert [e["masked"] for e in events[:2]] == [False, True]
    assert all(e["liveness"].startswith("3d-motion parallax=") for e in events[:2]), events
    assert "liveness" in events[2]["reason"] and events[2]["liveness"].startswith("none ")
    assert len(pulses(tmp_path)) == 2  # one relay pulse per unlock
    assert json.loads(state_file(tmp_path / "state" / "relay.jsonl").read_text())["level"] == 0


def test_bad_commands_never_pulse_the_relay(
    tmp_path: Path, broker: Mosquitto, test_data: Path
) -> None:
    key, pub = generate_keypair()
    other, _ = generate_keypair()
    folder = tmp_path / "empty-scene"
    folder.mkdir()
    shutil.copy(test_data / "insightface/mask_blue.jpg", folder / "wall.jpg")
    cfg = door_config(tmp_path, broker, pub, {"type": "folder", "path": str(folder)})
    base = "maskgate/door1"
    with broker.probe() as server, RunningDoor(cfg):
        server.subscribe(f"{base}/reply/#")
        refusals = {}
        unsigned = {"id": "u1", "payload": {"reason": "let me in"}}
        server.publish(f"{base}/request/unlock", unsigned)
        refusals["unsigned"] = server.wait_json(f"{base}/reply/unlock", "id", "u1")
        wrong = sign_request(other, "door1", f"{base}/request/unlock", {})
        server.publish(f"{base}/request/unlock", wrong)
        refusals["wrong key"] = server.wait_json(f"{base}/reply/unlock", "id", wrong["id"])
        expired = sign_request(key, "door1", f"{base}/request/unlock", {}, now=time.time() - 60)
        server.publish(f"{base}/request/unlock", expired)
        refusals["expired"] = server.wait_json(f"{base}/reply/unlock", "id", expired["id"])
        retained = sign_request(key, "door1", f"{base}/request/unlock", {})
        server.publish(f"{base}/request/unlock", retained, retain=True)
        refusals["retained"] = server.wait_json(f"{base}/reply/unlock", "id", retained["id"])
        server.publish(f"{base}/request/unlock", b"", retain=True)  # clear the retained message
        for name, reply in refusals.items():
            assert reply["status"] == "error" and reply["error"], name
        assert len(pulses(tmp_path)) == 0
        # One good request opens once; the same bytes again are a replay.
        good = sign_request(key, "door1", f"{base}/request/unlock", {"seconds": 0.5})
        server.publish(f"{base}/request/unlock", good)
        assert server.wait_json(f"{base}/reply/unlock", "id", good["id"])["status"] == "ok"
        server.clear()
        server.publish(f"{base}/request/unlock", good)
        replay = server.wait_json(f"{base}/reply/unlock", "id", good["id"])
        assert replay["status"] == "error" and "replay" in replay["error"].lower()
        assert len(pulses(tmp_path)) == 1
        # The longest reason a request may carry still opens once and says ok (and audits).
        state = state_file(tmp_path / "state" / "relay.jsonl")
        wait_until(lambda: json.loads(state.read_text())["level"] == 0, 10, "the relay relocked")
        server.subscribe(f"{base}/audit")
        long = sign_request(
            key, "door1", f"{base}/request/unlock", {"reason": "x" * 200, "seconds": 0.5}
        )
        server.publish(f"{base}/request/unlock", long)
        assert server.wait_json(f"{base}/reply/unlock", "id", long["id"])["status"] == "ok"
        assert server.wait_json(f"{base}/audit", "request_id", long["id"])["status"] == "ok"
        # An unsigned `list` is answered, without names.
        server.publish(f"{base}/request/list", {"id": "l1", "payload": {}})
        listed = server.wait_json(f"{base}/reply/list", "id", "l1")
        assert listed["status"] == "ok" and listed["result"]["state"]["count"] == 0
    assert len(pulses(tmp_path)) == 2
    for name, reply in refusals.items():
        print(name, "->", reply["error"])


def test_service_notifies_systemd_and_stops_locked_on_sigterm(
    tmp_path: Path, broker: Mosquitto, test_data: Path
) -> None:
    _, pub = generate_keypair()
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(test_data / "face_recognition/obama.jpg", folder / "a.jpg")
    cfg = door_config(
        tmp_path, broker, pub, {"type": "folder", "path": str(folder), "loop": True, "fps": 5}
    )
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(
        json.dumps(
            cfg.model_dump(mode="json")
            | {"mqtt": cfg.mqtt.model_dump(mode="json") | {"password": "door-pass"}}
        )
    )
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(1.0)
    env = os.environ | {
        "NOTIFY_SOCKET": sock_path,
        "WATCHDOG_USEC": "2000000",
        "INVOCATION_ID": "test",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "-c", str(cfg_file), "run"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    env.pop("WATCHDOG_PID", None)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 2:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                assert proc.poll() is None, proc.stdout.read().decode()
        assert "READY=1" in got and got.count("WATCHDOG=1") >= 2, got
        assert got.index("READY=1") < got.index("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    # Nobody enrolled: the line never left the locked level (no edge, so no state file), or
    # it is back at locked.
    state = state_file(tmp_path / "state" / "relay.jsonl")
    assert not state.exists() or json.loads(state.read_text())["level"] == 0
    assert pulses(tmp_path) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "maskgate.service"
    unit.write_text(
        (REPO_ROOT / "systemd/maskgate.service").read_text().replace("@ROOT@", str(REPO_ROOT))
    )
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    line = [x for x in sec.stdout.splitlines() if "Overall exposure level" in x]
    assert line, sec.stdout + sec.stderr
    score = float(line[0].split("level for")[1].split(":")[1].split()[0])
    assert score <= 2.5, line[0]
