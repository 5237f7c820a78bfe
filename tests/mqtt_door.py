"""The door's MQTT service for tests, with a recording handler instead of the door behind it.

`make_door(**mqtt_overrides)` starts an MqttService on the test's mosquitto that trusts `keys`;
`Recorder` records each request it is handed (a few person ids make it fail on purpose).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from pydantic import BaseModel

from edge.config import SecurityConfig
from edge.mqtt.client import MqttService, RequestFailed
from edge.mqtt.signing import VerifiedRequest, generate_keypair, load_private_key

BASE = "maskgate/door1"


class Recorder:
    """The handler: records every call; a few person ids make it fail on purpose."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseModel, VerifiedRequest]] = []

    def __call__(self, action: str, payload: BaseModel, req: VerifiedRequest) -> dict[str, Any]:
        self.calls.append((action, payload, req))
        person = getattr(payload, "person_id", None)
        if person == "nobody":
            raise RequestFailed("no such person 'nobody'")
        if person == "boom":
            raise RuntimeError("store exploded")
        if person == "odd":
            return {"when": object()}  # not JSON: the reply must still go out, as an error
        if person == "list":
            return ["not", "a", "dict"]  # type: ignore[return-value]
        return {"action": action, "person": person}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    pem, pub = generate_keypair()
    other, _ = generate_keypair()
    return {"key": load_private_key(pem), "pub": pub, "pem": pem, "other": load_private_key(other)}


Door = tuple[MqttService, Recorder]


@pytest.fixture
def make_door(
    mosquitto: Mosquitto, tmp_path: Path, keys: dict[str, Any]
) -> Iterator[Callable[..., Door]]:
    made: list[MqttService] = []

    def make(
        security: SecurityConfig | None = None,
        state_dir: Path | None = None,
        start: bool = True,
        broker: Mosquitto | None = None,
        **cfg: Any,
    ) -> Door:
        rec = Recorder()
        svc = MqttService(
            (broker or mosquitto).mqtt_config(**cfg),
            security or SecurityConfig(trusted_keys=[keys["pub"]]),
            state_dir or tmp_path / "state",
            rec,
            reconnect_delay_s=(1, 2),
        )
        made.append(svc)
        if start:
            svc.start()
            assert svc.wait_ready(10), "the door did not connect and subscribe within 10 s"
        return svc, rec

    yield make
    for svc in made:
        svc.stop()
