"""Simulated doors: the door's own request handling, template store and MQTT service, many in
one process, without camera, models or relay. `python -m fleet.simdoors SPEC` is one worker of
`fleet simulate`; it takes JSON commands on stdin and answers each with a JSON line on stdout.

Commands: {"op": "offline"|"online", "ids": [...]}, {"op": "inspect", "person": id},
{"op": "quit"}. The first line out is {"ready": n} once every door is connected.
"""

from __future__ import annotations

import json
import logging
import resource
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.config import LimitsConfig, MqttConfig, SecurityConfig
from edge.mqtt.client import MqttService
from edge.request_handlers import RequestHandlers
from edge.store import Store
from edge.templates import Templates

log = logging.getLogger(__name__)


class ErrorCounter(logging.Handler):
    """Counts every ERROR the door's code logs: the simulation's `errors`."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.messages.append(text[:400])


class SimDoor:
    def __init__(self, device_id: str, root: Path, key: bytes, spec: dict[str, Any]) -> None:
        self.device_id = device_id
        self.root = root
        self.spec = spec
        self.mqtt: MqttService | None = None
        self.store = Store(root / "templates.db", key, keep_crops=False)
        self.templates = Templates(self.store, spec["model_id"], self._publish_state)
        self.templates.refresh(force=True)
        self.handlers = RequestHandlers(
            self.templates,
            spec["dim"],
            enroller=None,
            opener=None,
            limits=LimitsConfig(),
            pulse_s=0.5,
            audit=self._audit,
        )

    def _publish_state(self, state: dict[str, Any]) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_state(state)

    def _audit(self, record: dict[str, Any]) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_audit(record)

    def start(self) -> None:
        cfg = MqttConfig(
            host=self.spec["host"],
            port=self.spec["port"],
            prefix=self.spec["prefix"],
            device_id=self.device_id,
            client_id=f"sim-{self.device_id}",
            username=self.spec.get("username"),
            password=self.spec.get("password"),
            discovery=False,
            keepalive_s=10,
        )
        security = SecurityConfig(trusted_keys=[self.spec["trusted_key"]])
        self.mqtt = MqttService(
            cfg, security, self.root, self.handlers.handle, reconnect_delay_s=(1, 2)
        )
        self.mqtt.start()

    def announce(self) -> None:
        self.templates.announce()

    def stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
            self.mqtt = None

    def holds(self, person_id: str) -> bool:
        return any(p.person_id == person_id for p in self.store.list())


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    counter = ErrorCounter()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().addHandler(counter)
    root = Path(spec["root"])
    key = secrets.token_bytes(32)
    doors = {d: SimDoor(d, root / d, key, spec) for d in spec["ids"]}
    for door in doors.values():
        door.start()
    deadline = time.monotonic() + 120
    for door in doors.values():
        assert door.mqtt is not None
        door.mqtt.wait_ready(max(0.1, deadline - time.monotonic()))
        door.announce()
    out_lock = threading.Lock()

    def say(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    say({"ready": sum(1 for d in doors.values() if d.mqtt and d.mqtt.ready)})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "offline":
            for d in cmd["ids"]:
                doors[d].stop()
            say({"op": op, "done": len(cmd["ids"])})
        elif op == "online":
            started = {}
            for d in cmd["ids"]:
                started[d] = time.time()
                doors[d].start()
            for d in cmd["ids"]:
                door = doors[d]
                assert door.mqtt is not None
                door.mqtt.wait_ready(10)
                door.announce()
            say({"op": op, "started": started})
        elif op == "inspect":
            person = cmd.get("person")
            say(
                {
                    "op": op,
                    "holding": [d for d, door in doors.items() if person and door.holds(person)],
                    "hashes": {d: door.templates.state()["hash"] for d, door in doors.items()},
                    "errors": counter.messages,
                }
            )
        elif op == "cpu":
            use = resource.getrusage(resource.RUSAGE_SELF)
            say({"op": op, "cpu_s": use.ru_utime + use.ru_stime})
        elif op == "quit":
            break
    for door in doors.values():
        door.stop()
        door.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
