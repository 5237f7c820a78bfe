"""The door's trust boundary, on the real daemon (`python -m edge run` in its own process, a real
mosquitto with passwords and an ACL, the mock relay): signed requests act at most once across
restarts, oversized images cannot exhaust it or starve an unlock, every request is answered,
and READY means the camera delivers frames."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import signal
import socketserver
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from broker import Mosquitto, MqttProbe, have_mosquitto
from service import DoorProcess, relay_pulses, run_relay_safe

from edge.config import load_config
from edge.demo import ENROLL, PHOTOS
from edge.mqtt.signing import generate_keypair, sign_request
from edge.systemd import journal_reachable

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

BASE = "maskgate/door1"


def door_dict(tmp: Path, broker: Mosquitto, pub: str, camera: dict[str, Any], **extra: Any):
    """A door config as the file systemd's unit points at (JSON is YAML)."""
    base = load_config()
    cfg = {
        "models": base.models.model_dump(mode="json")
        | {"manifest": str(base.resolve(base.models.manifest))},
        "match": base.match.model_dump(),
        "camera": camera,
        "mqtt": broker.mqtt_config().model_dump(mode="json")
        | {"password": "door-pass", "device_id": "door1"},
        "security": {"trusted_keys": [pub]},
        "relay": {"type": "mock", "pulse_s": 0.3, "mock_log": "relay.jsonl"},
        "daemon": {"state_dir": str(tmp / "state")},
    }
    return cfg | extra


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", device_id="door1") as b:
        yield b


@pytest.fixture()
def wall(tmp_path: Path, test_data: Path) -> dict[str, Any]:
    """A camera that sees an empty scene: a folder of one photo of a wall, looping."""
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(test_data / "insightface/mask_blue.jpg", folder / "wall.jpg")
    return {"type": "folder", "path": str(folder), "loop": True, "fps": 5}


def send(server: MqttProbe, key: bytes, action: str, payload: dict, **kw: Any) -> dict:
    topic = f"{BASE}/request/{action}"
    env = sign_request(key, "door1", topic, payload, **kw)
    server.publish(topic, env)
    return env


def reply(server: MqttProbe, action: str, env: dict, timeout: float = 30) -> dict:
    return server.wait_json(f"{BASE}/reply/{action}", "id", env["id"], timeout=timeout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ 1. replay after a restart


def test_a_signed_unlock_acts_once_across_sigkill_and_sigterm(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any]
) -> None:
    key, pub = generate_keypair()
    state = tmp_path / "state"
    door = DoorProcess(door_dict(tmp_path, broker, pub, wall), tmp_path / "door")
    with broker.probe() as server, door:
        server.subscribe(f"{BASE}/reply/#")
        door.wait_ready()
        captured = send(server, key, "unlock", {"seconds": 0.3}, validity_s=30)
        assert reply(server, "unlock", captured)["status"] == "ok"
        assert len(relay_pulses(state)) == 1
        raw = json.dumps(captured)
        for sig in (signal.SIGKILL, signal.SIGTERM):
            door.signal(sig)
            run_relay_safe(door.config_file)  # the unit's ExecStopPost=
            server.clear()
            door.start()
            door.wait_ready()
            # The attacker's copy, published the moment the door is back.
            server.publish(f"{BASE}/request/unlock", raw)
            again = reply(server, "unlock", captured)
            assert again["status"] == "error" and "replayed" in again["error"], (sig, again)
        # The door still obeys a new signed request.
        fresh = send(server, key, "unlock", {"seconds": 0.3})
        assert reply(server, "unlock", fresh)["status"] == "ok"
    assert len(relay_pulses(state)) == 2  # the captured request once, the fresh one once


def test_a_kill_around_the_nonce_write_never_opens_twice(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any]
) -> None:
    """SIGKILL lands anywhere from the request's arrival to its reply; then the same request
    is replayed after the restart. Each request opens the door at most once."""
    key, pub = generate_keypair()
    state = tmp_path / "state"
    rng = np.random.default_rng(3)
    door = DoorProcess(door_dict(tmp_path, broker, pub, wall), tmp_path / "door")
    outcomes = []
    with broker.probe() as server:
        server.subscribe(f"{BASE}/reply/#")
        for _ in range(6):
            door.start()
            door.wait_ready()
            before = len(relay_pulses(state))
            env = send(server, key, "unlock", {"seconds": 0.2}, validity_s=30)
            time.sleep(float(rng.uniform(0.0, 0.08)))
            door.signal(signal.SIGKILL)
            run_relay_safe(door.config_file)
            first = [
                r
                for r in (m.json() for m in server.messages(f"{BASE}/reply/unlock"))
                if r["id"] == env["id"]
            ]
            door.start()
            door.wait_ready()
            server.clear()
            server.publish(f"{BASE}/request/unlock", env)
            second = reply(server, "unlock", env)
            opened = len(relay_pulses(state)) - before
            outcomes.append((bool(first), second["status"], opened))
            assert opened <= 1, outcomes
            if second["status"] == "ok":  # only when the first copy never acted
                assert not any(r["status"] == "ok" for r in first), outcomes
            else:
                assert "replayed" in second["error"], outcomes
            assert door.signal(signal.SIGTERM) == 0
    print("kill outcomes (first replied, replay status, pulses):", outcomes)


# ------------------------------------------------------------------ 2. bombs and lanes


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of width×height black pixels, written row by row (tiny, huge decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(photo: np.ndarray, width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", photo)
    assert ok
    data = bytearray(buf.tobytes())
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_bombs_are_refused_with_bounded_memory_and_unlocks_behind_them_are_served(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any], test_data: Path
) -> None:
    key, pub = generate_keypair()
    state = tmp_path / "state"
    photo = cv2.imread(str(test_data / "face_recognition/obama.jpg"))
    ok, webp = cv2.imencode(".webp", photo[:300, :300], [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert ok
    webp_huge = bytearray(webp.tobytes())
    webp_huge[26:30] = struct.pack("<HH", 16383, 16383)
    ok, tiff = cv2.imencode(".tiff", photo)
    assert ok
    bombs = {
        "png 6000x6000": png_bomb(6000, 6000),
        "png 16000x16000": png_bomb(16000, 16000),
        "jpeg declaring 60000x60000": jpeg_declaring(photo[:200, :200], 60000, 60000),
        "webp declaring 16383x16383": bytes(webp_huge),
        "tiff": tiff.tobytes(),
    }
    assert all(len(b) < 2 * 2**20 for b in bombs.values())  # each fits an enroll request
    door = DoorProcess(door_dict(tmp_path, broker, pub, wall), tmp_path / "door")
    with broker.probe() as server, door:
        server.subscribe(f"{BASE}/reply/#")
        door.wait_ready()
        rss_before = door.peak_rss_mb()
        for name, data in bombs.items():
            enroll = send(server, key, "enroll", {"person_id": "eve", "images": [b64(data)]})
            sent = time.monotonic()
            unlock = send(server, key, "unlock", {"seconds": 0.2})
            got = reply(server, "unlock", unlock, timeout=10)
            assert got["status"] == "ok" and time.monotonic() - sent < 2.0, name
            refused = reply(server, "enroll", enroll)
            assert refused["status"] == "error", name
            assert "max_image_pixels" in refused["error"] or "not accepted" in refused["error"]
            time.sleep(0.5)  # the pulse ends: the next unlock is an edge of its own
        rss_after = door.peak_rss_mb()
        listed = send(server, key, "list", {})
        assert reply(server, "list", listed)["result"]["state"]["count"] == 0
    print(f"peak RSS {rss_before:.0f} MB before the bombs, {rss_after:.0f} MB after")
    assert rss_after - rss_before < 60, (rss_before, rss_after)
    assert len(relay_pulses(state)) == len(bombs)


def test_a_slow_enroll_does_not_starve_an_unlock_behind_it(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any]
) -> None:
    key, pub = generate_keypair()
    photos = [b64((PHOTOS / p).read_bytes()) for p in ENROLL] * 5  # 10 photos, 30 templates
    door = DoorProcess(door_dict(tmp_path, broker, pub, wall), tmp_path / "door")
    with broker.probe() as server, door:
        server.subscribe(f"{BASE}/reply/#")
        door.wait_ready()
        enroll = send(server, key, "enroll", {"person_id": "barack", "images": photos})
        time.sleep(0.2)  # the enrollment is under way
        sent = time.monotonic()
        unlock = send(server, key, "unlock", {"seconds": 0.2})
        assert reply(server, "unlock", unlock, timeout=10)["status"] == "ok"
        unlock_s = time.monotonic() - sent
        assert not server.messages(f"{BASE}/reply/enroll"), "the enroll finished first"
        done = reply(server, "enroll", enroll, timeout=120)
        enroll_s = time.monotonic() - sent
    print(f"unlock answered after {unlock_s:.2f} s, the enroll after {enroll_s:.2f} s")
    assert done["status"] == "ok" and done["result"]["templates"] >= 20
    assert unlock_s < 2.0


# ------------------------------------------------------------------ 4. every request answered


def test_a_lone_surrogate_in_the_id_still_gets_an_error_reply(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any]
) -> None:
    _, pub = generate_keypair()
    door = DoorProcess(door_dict(tmp_path, broker, pub, wall), tmp_path / "door")
    with broker.probe() as server, door:
        server.subscribe(f"{BASE}/reply/#")
        door.wait_ready()
        server.publish(f"{BASE}/request/list", b'{"id": "a\\ud800b", "payload": {}}')
        answer = server.wait_json(f"{BASE}/reply/list", "id", "a\\ud800b", timeout=10)
        assert answer["status"] == "error" and "id" in answer["error"], answer
        server.publish(f"{BASE}/request/list", {"id": "after", "payload": {}})
        assert server.wait_json(f"{BASE}/reply/list", "id", "after")["status"] == "ok"


# ------------------------------------------------------------------ 5./6. READY and logs


def test_a_camera_that_never_opens_is_a_failed_start_with_a_clear_message(
    tmp_path: Path, broker: Mosquitto
) -> None:
    _, pub = generate_keypair()
    camera = {"type": "v4l2", "device": str(tmp_path / "video9"), "start_timeout_s": 3.0}
    door = DoorProcess(door_dict(tmp_path, broker, pub, camera), tmp_path / "door")
    with door:
        code = door.wait(120)
        err = door.stderr()
    assert code == 1, err
    assert not door.notified("READY=1"), door.notes
    assert "delivered no frame within 3 s (camera.start_timeout_s)" in err
    assert "Traceback" not in err
    # NOTIFY_SOCKET is set: the log lines go to journald where it listens, else to stderr
    # (before, a journal handler without a journald swallowed them all).
    assert ("waiting up to 3 s for the first frame" in err) != journal_reachable(), err


def test_ready_waits_for_the_first_frame_of_a_slow_camera(
    tmp_path: Path, broker: Mosquitto
) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(20):
        writer.write(np.full((240, 320, 3), 40 + 5 * i, np.uint8))
    writer.release()
    data = clip.read_bytes()
    answered: list[float] = []

    class SlowCamera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3.0)  # a USB/IP camera that takes its time
            answered.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "video/x-msvideo")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SlowCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, pub = generate_keypair()
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
        camera = {"type": "url", "url": url, "start_timeout_s": 30.0}
        door = DoorProcess(door_dict(tmp_path, broker, pub, camera), tmp_path / "door")
        with door:
            ready_at = door.wait_ready()
            assert door.signal(signal.SIGTERM) == 0
    finally:
        server.shutdown()
    assert answered and ready_at >= answered[0], (answered, ready_at)


# ------------------------------------------------------------------ 3. keys, 7. noise


def test_a_bad_trusted_key_fails_validation_and_start_without_a_traceback(
    tmp_path: Path, broker: Mosquitto, wall: dict[str, Any]
) -> None:
    cfg = door_dict(tmp_path, broker, "not-a-key!!", wall)
    door = DoorProcess(cfg, tmp_path / "door")
    check = subprocess.run(
        [sys.executable, "-m", "edge", "-c", str(door.config_file), "validate-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 2
    assert "security.trusted_keys" in check.stderr and "not base64" in check.stderr
    with door:
        assert door.wait(120) == 2
    assert "not base64" in door.stderr() and "Traceback" not in door.stderr()
    assert not door.notified("READY=1")


def test_native_libraries_are_quiet_unless_asked(test_data: Path) -> None:
    photos = [
        str(test_data / "face_recognition/obama.jpg"),
        str(test_data / "face_recognition/obama2.jpg"),
    ]
    quiet = subprocess.run(
        [sys.executable, "-m", "edge", "compare", *photos],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "edge", "-v", "compare", *photos],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "XNNPACK" in loud.stderr or "W0000" in loud.stderr, loud.stderr
