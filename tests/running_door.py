"""The whole door (`edge.daemon.Door`) running in a thread of the test, with a real broker, the
mock relay and a camera that waits for the test's signal: shared by the daemon and PAD tests."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from broker import Mosquitto, MqttProbe, wait_until

from edge.config import Config, load_config, parse_config
from edge.daemon import Door
from edge.mqtt.signing import sign_request


def door_config(tmp: Path, broker: Mosquitto, pub: str, camera: dict[str, Any]) -> Config:
    base = load_config()
    return parse_config(
        {
            "models": base.models.model_dump(mode="json")
            | {"manifest": str(base.resolve(base.models.manifest))},
            "match": base.match.model_dump(),
            "camera": camera,
            "mqtt": broker.mqtt_config().model_dump(mode="json")
            | {"password": "door-pass", "device_id": broker.device_id},
            "security": {"trusted_keys": [pub]},
            "relay": {"type": "mock", "pulse_s": 1.0, "mock_log": "relay.jsonl"},
            "decision": {"cooldown_s": 2.0},
            "daemon": {"state_dir": str(tmp / "state")},
        },
        source="test config",
    )


def pulses(tmp: Path) -> list[dict[str, Any]]:
    log = tmp / "state" / "relay.jsonl"
    edges = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [e for e in edges if e["level"] == 1]


class RunningDoor:
    def __init__(self, cfg: Config) -> None:
        self.gate = threading.Event()
        self.door = Door(cfg, exit_at_end=True, camera_gate=self.gate)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.door.run()
        except BaseException as err:
            self.errors.append(err)

    def __enter__(self) -> RunningDoor:
        self.thread.start()
        wait_until(lambda: self.door.ready.is_set() or not self.thread.is_alive(), 120, "ready")
        assert not self.errors, self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.door.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def request(probe: MqttProbe, key: bytes, action: str, payload: dict, **kw: Any) -> dict:
    topic = f"maskgate/door1/request/{action}"
    env = sign_request(key, "door1", topic, payload, **kw)
    probe.publish(topic, env)
    return probe.wait_json(f"maskgate/door1/reply/{action}", "id", env["id"], timeout=60)
