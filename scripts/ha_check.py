"""Issue 11 checked against a real Home Assistant Core, a real mosquitto and the real door.

Run it through scripts/ha_check.sh, which builds Home Assistant's venv first; by hand:

    .venv/bin/python scripts/ha_check.py --hass ~/.cache/maskgate/ha-venv/bin/hass

It starts its own mosquitto (no persistence) on a free loopback port, the door
(`python -m edge run`: a camera that sees a wall, the mock relay, discovery and snapshots on) and
Home Assistant (`hass -c DIR`) with the MQTT integration written into its config entries,
`mqtt_statestream` (HA publishes every state change under maskgate_check/statestream/) and two
automations: one answers maskgate_check/query with HA's current MQTT entity states (the driver's
window on HA, no UI or token needed), one calls HA's own `lock.unlock` on the door's lock.

Each check prints PASS or FAIL as it ends; a summary table closes the run. Exit status: 0 all
passed, 1 a check failed, 2 the run was aborted (checks it did not reach count as failed).
Every process it starts is stopped on the way out, on SIGTERM too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import load_config
from edge.mqtt.localbroker import HOST, LocalBroker, free_port
from edge.mqtt.signing import generate_keypair, sign_request

REPO = Path(__file__).resolve().parent.parent
EXPECTED_HA = "2024.3.3"

DEVICE = "door1"
BASE = f"maskgate/{DEVICE}"
NODE = f"maskgate_{DEVICE}"
DISCOVERY = "homeassistant"
BIRTH = f"{DISCOVERY}/status"
# Every discovery config the door publishes, by the role the checks give its entity.
CONFIG_TOPICS = {
    "lock": f"{DISCOVERY}/lock/{NODE}/lock/config",
    "access": f"{DISCOVERY}/event/{NODE}/access/config",
    "last_person": f"{DISCOVERY}/sensor/{NODE}/last_person/config",
    "enrolled": f"{DISCOVERY}/sensor/{NODE}/enrolled_persons/config",
    "snapshot": f"{DISCOVERY}/image/{NODE}/snapshot/config",
}
UNIQUE_IDS = {
    "lock": f"{NODE}_lock",
    "access": f"{NODE}_access",
    "last_person": f"{NODE}_last_person",
    "enrolled": f"{NODE}_enrolled_persons",
    "snapshot": f"{NODE}_snapshot",
}
RETAINED = ("availability", "state", "lock", "last_person")  # the door's own retained topics
# The three states issue 11 wants back after restarts.
CORE_ROLES = ("lock", "enrolled", "last_person")

# The driver's side of HA's automations (configuration.yaml below).
QUERY = "maskgate_check/query"
STATES = "maskgate_check/states"
HA_UNLOCK = "maskgate_check/unlock"
STATESTREAM = "maskgate_check/statestream"

NOT_REAL = ("unknown", "unavailable")
REMOTE_REASON = "ha-check"
PULSE_S = 1.0
FIRST_HA_START_S = 900.0  # the first start into a fresh venv pip-installs integration packages
HA_START_S = 180.0
DOOR_START_S = 120.0
QUICK_S = 5.0  # issue 11: retained state and lock back within 5 s
FEW_S = 10.0  # HA reconnects (paho backoff from 1 s) and waits out its own cool-downs

T0 = time.monotonic()


def say(text: str) -> None:
    """One step of the run, with seconds since the start."""
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


# ------------------------------------------------------------------------------------ results


@dataclass
class Check:
    name: str
    ok: bool | None = None  # None: not reached
    detail: str = "not reached"


class Report:
    """Every check named up front, so one that never ran shows up as a failure."""

    def __init__(self, names: list[str]) -> None:
        self.checks = {n: Check(n) for n in names}
        self.notes: list[str] = []

    def record(self, name: str, ok: bool, detail: str) -> bool:
        check = self.checks.setdefault(name, Check(name))
        check.ok, check.detail = ok, detail
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE  {text}", flush=True)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def summary(self) -> str:
        width = max(len(n) for n in self.checks)
        lines = ["", "=" * (width + 60), f"{'check'.ljust(width)}  result  detail"]
        lines.append("-" * (width + 60))
        for c in self.checks.values():
            mark = "PASS" if c.ok else "FAIL"
            lines.append(f"{c.name.ljust(width)}  {mark}    {c.detail}")
        lines.append("=" * (width + 60))
        if self.notes:
            lines += ["notes:", *(f"  - {n}" for n in self.notes)]
        return "\n".join(lines)


CHECKS = [
    "0 HA version",
    "0 device and entities appear",
    "0 entity and device registry",
    "0 no warning in HA's log",
    "4 remote unlock opens the door",
    "4 last-person state after remote unlock",
    "4 HA lock follows the real pulse",
    "5 HA lock.unlock refused, no pulse",
    "5 HA refusal in the audit",
    "5 HA lock state stays locked",
    "2 HA restart: states known at once",
    "2 birth message: door re-publishes",
    "2 birth alone restores wiped retained",
    "1 broker restart: door's retained back",
    "1 HA restarted after broker restart",
    "1 broker restart under running HA",
    "3 snapshots off: image entity removed",
    "3 discovery off: entities removed",
    "3 registry cleared after discovery off",
    "- door-related warnings in HA's logs",
    "- door log free of errors",
]


# ------------------------------------------------------------------------------------ MQTT


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool
    t: float  # time.monotonic() at arrival

    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


class Observer:
    """A clean-session client on `#` that keeps every message in arrival order. paho reconnects
    it after a broker restart (and it subscribes again), as any client of the door would."""

    def __init__(self, port: int, client_id: str = "maskgate-ha-check") -> None:
        self._msgs: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async(HOST, port, keepalive=20)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        self._subscribed.clear()
        client.subscribe("#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._msgs.append(Msg(m.topic, bytes(m.payload), bool(m.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 15.0) -> bool:
        return self._subscribed.wait(timeout)

    def mark(self) -> int:
        with self._cond:
            return len(self._msgs)

    def since(self, mark: int, topic: str | None = None) -> list[Msg]:
        with self._cond:
            msgs = self._msgs[mark:]
        return [m for m in msgs if topic is None or m.topic == topic]

    def wait(self, pred: Callable[[Msg], bool], timeout: float, mark: int = 0) -> Msg | None:
        """The first message from `mark` on that satisfies pred, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        seen = mark
        with self._cond:
            while True:
                for m in self._msgs[seen:]:
                    if pred(m):
                        return m
                seen = len(self._msgs)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with suppress(RuntimeError, ValueError):  # not connected: let the caller's wait fail
            info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(port: int, topics: list[str], settle_s: float = 0.7) -> dict[str, bytes]:
    """What a brand-new subscriber gets as retained on `topics`, as HA does after a restart."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        if m.retain:
            got[m.topic] = bytes(m.payload)

    def on_connect(client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(t, 1) for t in topics])

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-check-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: done.set()
    try:
        client.connect(HOST, port, keepalive=10)
    except OSError:
        return {}
    client.loop_start()
    try:
        if done.wait(3):
            time.sleep(settle_s)  # retained messages follow the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return got


# ------------------------------------------------------------------------------------ processes


class Proc:
    """A child in its own session (so its own children go with it), output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name, self.argv, self.log, self.cwd = name, argv, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, wait, then SIGKILL the whole group; the seconds the stop took."""
        started = time.monotonic()
        if self.proc is None:
            return 0.0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} ignored SIGTERM for {timeout:g} s: SIGKILL")
                self.proc.kill()
                self.proc.wait(10)
        with suppress(ProcessLookupError, PermissionError):  # a leftover child of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        return time.monotonic() - started

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------ the door


class Door:
    """`python -m edge -c CONFIG run` with a camera on a wall, the mock relay and this broker."""

    def __init__(
        self, work: Path, python: str, port: int, public_key: str, root: Path = REPO
    ) -> None:
        self.work = work
        self.state_dir = work / "door-state"
        self.scene = work / "scene"
        self.config_file = work / "door.yaml"
        self.python, self.port, self.public_key = python, port, public_key
        self.proc = Proc(
            "door",
            [python, "-m", "edge", "-c", str(self.config_file), "run"],
            work / "door.log",
            cwd=root,  # `python -m edge` imports the door from here
        )
        self._write_scene()

    def _write_scene(self) -> None:
        # An empty grey wall: the camera runs (READY needs frames) but never sees a face, so
        # every decision in this run is one the script asked for.
        self.scene.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.scene / "wall.jpg"), np.full((480, 640, 3), 140, np.uint8))

    def config(self, **mqtt_extra: Any) -> dict[str, Any]:
        base = load_config()  # the project's models and thresholds, as the tests use them
        return {
            "models": {"manifest": str(base.resolve(base.models.manifest))},
            "match": base.match.model_dump(),
            "camera": {"type": "folder", "path": str(self.scene), "loop": True, "fps": 5},
            "mqtt": {"host": HOST, "port": self.port, "device_id": DEVICE} | mqtt_extra,
            "security": {"trusted_keys": [self.public_key]},
            "relay": {"type": "mock", "mock_log": "relay.jsonl", "pulse_s": PULSE_S},
            "daemon": {"state_dir": str(self.state_dir)},
        }

    def start(self, obs: Observer, **mqtt_extra: Any) -> None:
        self.config_file.write_text(json.dumps(self.config(**mqtt_extra)))  # JSON is YAML
        mark = obs.mark()
        say(f"starting the door (mqtt {mqtt_extra})")
        self.proc.start()
        online = obs.wait(
            lambda m: m.topic == f"{BASE}/availability" and m.payload == b"online",
            DOOR_START_S,
            mark,
        )
        lock = obs.wait(lambda m: m.topic == f"{BASE}/lock", 30, mark) if online else None
        if lock is None or not self.proc.alive:
            raise RuntimeError(f"the door did not come online:\n{self.proc.tail()}")
        say("door online")

    def stop(self) -> None:
        if self.proc.alive:
            say(f"door stopped (SIGTERM) in {self.proc.stop(30):.1f} s")

    def pulses(self) -> int:
        """Unlocking edges (level 1) in the mock relay's log."""
        log = self.state_dir / "relay.jsonl"
        if not log.exists():
            return 0
        edges = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        return sum(1 for e in edges if e.get("level") == 1)

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace") if self.proc.log.exists() else ""


# ------------------------------------------------------------------------------------ HA


CONFIGURATION_YAML = """\
# Written by scripts/ha_check.py: as little as HA needs to show the door (no default_config).
homeassistant:
  name: MaskGate check
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE

http:
  server_host: 127.0.0.1
  server_port: {http_port}

logger:
  default: warning
  logs:
    homeassistant.bootstrap: info
    homeassistant.components.mqtt: info

# Every state change, with attributes, published under {statestream}/<domain>/<object>/...
mqtt_statestream:
  base_topic: {statestream}
  publish_attributes: true

automation:
  # The driver's window on HA: the current state and attributes of every MQTT entity.
  - id: maskgate_check_query
    alias: maskgate check query
    mode: queued
    max: 100
    trigger:
      - platform: mqtt
        topic: {query}
    action:
      - service: mqtt.publish
        data:
          topic: {states}
          payload: >-
            {{%- set ns = namespace(out=[]) -%}}
            {{%- for s in states if s.entity_id in integration_entities('mqtt') -%}}
            {{%- set ns.out = ns.out + [{{'entity_id': s.entity_id, 'state': s.state,
                'attributes': dict(s.attributes)}}] -%}}
            {{%- endfor -%}}
            {{{{ {{'nonce': trigger.payload, 'states': ns.out}} | to_json }}}}
  # HA's own lock command, as a user pressing "unlock" on the door's lock card would send it.
  - id: maskgate_check_unlock
    alias: maskgate check unlock
    trigger:
      - platform: mqtt
        topic: {unlock}
    action:
      - service: lock.unlock
        target:
          entity_id: "{{{{ trigger.payload }}}}"
"""


def write_ha_config(config_dir: Path, broker_port: int, http_port: int) -> None:
    """configuration.yaml and the MQTT config entry (HA dropped YAML broker settings)."""
    (config_dir / ".storage").mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        CONFIGURATION_YAML.format(
            http_port=http_port,
            statestream=STATESTREAM,
            query=QUERY,
            states=STATES,
            unlock=HA_UNLOCK,
        )
    )
    # The format of homeassistant/config_entries.py (ConfigEntry.as_dict, storage version 1);
    # the data keys are those the MQTT config flow stores (mqtt/const.py).
    entry = {
        "entry_id": uuid.uuid4().hex,
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": HOST,
        "data": {"broker": HOST, "port": broker_port, "discovery": True},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    store = {
        "version": 1,
        "minor_version": 1,
        "key": "core.config_entries",
        "data": {"entries": [entry]},
    }
    (config_dir / ".storage" / "core.config_entries").write_text(json.dumps(store, indent=2))


class HomeAssistant:
    """`hass -c DIR`; up means its birth message (homeassistant/status online) was seen."""

    def __init__(self, hass: str, config_dir: Path, work: Path) -> None:
        self.hass, self.config_dir, self.work = hass, config_dir, work
        self.runs = 0
        self.proc: Proc | None = None
        self.birth_at = 0.0

    @property
    def log(self) -> Path:
        return self.work / f"ha-run{self.runs}.log"

    def version(self) -> str:
        out = subprocess.run([self.hass, "--version"], capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or out.stderr.strip()

    def start(self, obs: Observer, timeout: float) -> float:
        """Start HA and wait for its birth message; the seconds that took."""
        self.runs += 1
        self.proc = Proc("Home Assistant", [self.hass, "-c", str(self.config_dir)], self.log)
        mark = obs.mark()
        started = time.monotonic()
        say(f"starting Home Assistant (run {self.runs}, log {self.log.name})")
        self.proc.start()
        birth = None
        while birth is None and time.monotonic() - started < timeout:
            birth = obs.wait(lambda m: m.topic == BIRTH and m.payload == b"online", 5, mark)
            if birth is None and not self.proc.alive:
                raise RuntimeError(f"Home Assistant exited:\n{self.proc.tail()}")
        if birth is None:
            raise RuntimeError(f"no birth message from HA in {timeout:g} s:\n{self.proc.tail()}")
        self.birth_at = birth.t
        say(f"Home Assistant up: birth message {birth.t - started:.1f} s after the start")
        return birth.t - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive:
            say(f"Home Assistant stopped (SIGTERM) in {self.proc.stop(90):.1f} s")

    def registry(self, name: str) -> dict[str, Any]:
        path = self.config_dir / ".storage" / name
        return json.loads(path.read_text())["data"] if path.exists() else {}


class HaView:
    """HA's current MQTT entity states, asked through the query automation."""

    def __init__(self, obs: Observer) -> None:
        self.obs = obs

    def states(self, timeout: float = 3.0) -> dict[str, dict[str, Any]] | None:
        """role -> {entity_id, state, attributes}; None when HA did not answer."""
        nonce = uuid.uuid4().hex
        mark = self.obs.mark()
        self.obs.publish(QUERY, nonce.encode())
        answer = self.obs.wait(
            lambda m: m.topic == STATES and (m.json() or {}).get("nonce") == nonce, timeout, mark
        )
        if answer is None:
            return None
        return {r: s for s in answer.json()["states"] if (r := role_of(s["entity_id"]))}

    def poll(
        self, cond: Callable[[dict[str, dict[str, Any]]], bool], timeout: float, step: float = 0.3
    ) -> tuple[dict[str, dict[str, Any]] | None, float | None]:
        """Ask until cond holds: (the last answer, the time it held or None)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            got = self.states(timeout=min(2.0, max(0.2, deadline - time.monotonic())))
            if got is not None:
                last = got
                if cond(got):
                    return got, time.monotonic()
            time.sleep(step)
        return last, None


def role_of(entity_id: str) -> str | None:
    """The door's entity a state belongs to. HA holds no other MQTT device in this run; the
    registry check (unique ids) confirms the mapping."""
    domain, _, obj = entity_id.partition(".")
    if domain == "sensor":
        if obj.endswith("enrolled_persons"):
            return "enrolled"
        if obj.endswith("last_person"):
            return "last_person"
        return None
    return {"lock": "lock", "event": "access", "image": "snapshot"}.get(domain)


def real(states: dict[str, dict[str, Any]] | None, roles: tuple[str, ...] = CORE_ROLES) -> bool:
    return states is not None and all(
        r in states and states[r]["state"] not in NOT_REAL for r in roles
    )


def show(states: dict[str, dict[str, Any]] | None, roles: tuple[str, ...] = CORE_ROLES) -> str:
    if states is None:
        return "HA did not answer"
    return ", ".join(f"{r}={states[r]['state'] if r in states else '(none)'}" for r in roles)


def statestream_timeline(
    obs: Observer, mark: int, roles: dict[str, str], origin: float
) -> list[str]:
    """What HA showed, change by change, from statestream: '+1.2s lock=unavailable' (seconds
    since `origin`, as the driver received them)."""
    out = []
    for m in obs.since(mark):
        for role, entity_id in roles.items():
            if m.topic == f"{STATESTREAM}/{entity_id.replace('.', '/')}/state":
                out.append(f"{m.t - origin:+.1f}s {role}={m.text()}")
    return out


# ------------------------------------------------------------------------------------ HA's log

LOG_LINE = re.compile(
    # "2024-03-01 12:00:00.123 WARNING (MainThread) [homeassistant.x] text"; thread names may
    # hold parentheses themselves: "(Thread-2 (_thread_main))".
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (WARNING|ERROR|CRITICAL) \((.*?)\) \[([^\]]+)\] (.*)"
)
LOG_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ")


@dataclass
class LogProblem:
    run: int
    when: datetime
    level: str
    logger: str
    message: str
    traceback: str = ""  # the lines that followed it, up to the next log line

    def line(self) -> str:
        text = f"{self.message[:200]}"
        if self.traceback:
            text += f" ... {self.traceback.strip().splitlines()[-1][:160]}"
        return f"run {self.run} {self.when:%H:%M:%S} {self.level} [{self.logger}] {text}"


def log_problems(path: Path, run: int) -> list[LogProblem]:
    """WARNING and worse entries of one HA run, each with its traceback."""
    out: list[LogProblem] = []
    text = path.read_text(errors="replace") if path.exists() else ""
    inside = False  # the previous timestamped line was a problem: collect what follows it
    for raw in text.splitlines():
        m = LOG_LINE.match(raw)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            out.append(LogProblem(run, when, m.group(2), m.group(4), m.group(5)))
            inside = True
        elif LOG_START.match(raw):
            inside = False
        elif inside:
            out[-1].traceback += raw + "\n"
    return out


def instrument(p: LogProblem) -> bool:
    """mqtt_statestream, this script's window on HA, publishing while HA is disconnected or
    stopping: HA's own noise, not the door's."""
    return "mqtt_statestream" in p.message + p.traceback


def door_related(p: LogProblem) -> bool:
    """HA's MQTT integration speaking, or anything naming the door (not the venv's path)."""
    mqtt_logger = p.logger == "homeassistant.components.mqtt" or p.logger.startswith(
        "homeassistant.components.mqtt."
    )
    text = (p.message + p.traceback).lower()
    names_door = any(n.lower() in text for n in (NODE, BASE, f"MaskGate {DEVICE}"))
    return (mqtt_logger or names_door) and not instrument(p)


# ------------------------------------------------------------------------------------ the run


@dataclass
class World:
    work: Path
    broker: LocalBroker
    obs: Observer
    door: Door
    ha: HomeAssistant
    view: HaView
    key_pem: bytes
    report: Report
    entity_ids: dict[str, str] = field(default_factory=dict)  # role -> HA entity id
    outages: list[tuple[datetime, datetime]] = field(default_factory=list)


@contextmanager
def running(work: Path, args: argparse.Namespace) -> Iterator[World]:
    """Broker, observer, door and HA; all of them stopped on the way out, whatever happened."""
    pem, pub = generate_keypair()
    broker = LocalBroker(work / "broker", persistence=False)
    obs: Observer | None = None
    door: Door | None = None
    ha = HomeAssistant(args.hass, work / "ha-config", work)
    try:
        say(f"starting mosquitto on {HOST}:{broker.port} (no persistence)")
        broker.start()
        obs = Observer(broker.port)
        if not obs.wait_subscribed():
            raise RuntimeError("the observer could not subscribe")
        write_ha_config(ha.config_dir, broker.port, free_port())
        door = Door(work, args.door_python, broker.port, pub, args.door_root)
        report = Report(CHECKS)
        yield World(work, broker, obs, door, ha, HaView(obs), pem, report)
    finally:
        say("cleaning up: Home Assistant, door, observer, mosquitto")
        with suppress(Exception):
            ha.stop()
        if door is not None:
            with suppress(Exception):
                door.stop()
        if obs is not None:
            with suppress(Exception):
                obs.close()
        with suppress(Exception):
            broker.stop()


def first_start(w: World, first_ha_start_s: float) -> None:
    """Door up with snapshots, then HA: the device and every entity appear."""
    r = w.report
    version = w.ha.version()
    r.record("0 HA version", version == EXPECTED_HA, f"Home Assistant {version}")
    w.door.start(w.obs, snapshot=True)
    w.ha.start(w.obs, first_ha_start_s)
    want = ("lock", "access", "last_person", "enrolled", "snapshot")
    # Entities come with discovery; their states a moment later (HA subscribes in batches).
    states, at = w.view.poll(
        lambda s: all(x in s for x in want) and real(s, ("lock", "enrolled")), 20
    )
    if states is not None:
        w.entity_ids.update({role: s["entity_id"] for role, s in states.items()})
    ok = at is not None
    r.record(
        "0 device and entities appear",
        ok,
        f"{', '.join(f'{k}={v}' for k, v in sorted(w.entity_ids.items()))}; "
        f"{show(states, ('lock', 'enrolled', 'last_person', 'snapshot'))}",
    )
    if not ok:
        raise RuntimeError("HA has not got the door's entities: the rest cannot be checked")


def check_remote_unlock(w: World) -> None:
    """Issue 11 item 4: a signed remote unlock sets the last-person sensor to remote:<reason>,
    with null face fields; HA's lock follows the real pulse."""
    r = w.report
    before = w.door.pulses()
    topic = f"{BASE}/request/unlock"
    env = sign_request(w.key_pem, DEVICE, topic, {"reason": REMOTE_REASON}, validity_s=30)
    mark = w.obs.mark()
    say("sending a signed remote unlock")
    w.obs.publish(topic, json.dumps(env).encode())
    reply = w.obs.wait(
        lambda m: m.topic == f"{BASE}/reply/unlock" and (m.json() or {}).get("id") == env["id"],
        15,
        mark,
    )
    status = (reply.json() or {}).get("status") if reply else None
    time.sleep(0.3)
    opened = w.door.pulses() - before
    r.record(
        "4 remote unlock opens the door",
        status == "ok" and opened == 1,
        f"reply {status}, {opened} relay pulse(s)",
    )
    want = f"remote:{REMOTE_REASON}"
    states, at = w.view.poll(lambda s: s.get("last_person", {}).get("state") == want, 10)
    person = (states or {}).get("last_person", {"state": None, "attributes": {}})
    attrs = person["attributes"]
    ok = (
        at is not None
        and person["state"] != "unknown"
        # present and null: HA keeps None attributes, so "no face" is shown, not guessed
        and "score" in attrs
        and attrs["score"] is None
        and "masked" in attrs
        and attrs["masked"] is None
        and attrs.get("decision") == "unlock"
    )
    shown = {k: attrs.get(k, "(absent)") for k in ("score", "masked", "person", "decision")}
    r.record(
        "4 last-person state after remote unlock",
        ok,
        f"state {person['state']!r}, attributes {shown}",
    )
    r.note(f"HA's last-person attributes after the remote unlock: {json.dumps(attrs)}")
    time.sleep(PULSE_S + 1.5)  # the relock
    lock_id = w.entity_ids["lock"]
    seen = [m.text() for m in w.obs.since(mark, f"{STATESTREAM}/{lock_id.replace('.', '/')}/state")]
    r.record(
        "4 HA lock follows the real pulse",
        "unlocked" in seen and seen[-1:] == ["locked"],
        f"HA's lock states (statestream): {' -> '.join(seen) or '(none)'}",
    )


def check_ha_lock_refused(w: World) -> None:
    """Issue 11 item 5 and the lock: HA's own lock.unlock is refused, audited, never pulses."""
    r = w.report
    before = w.door.pulses()
    mark = w.obs.mark()
    say(f"HA automation: lock.unlock on {w.entity_ids['lock']}")
    w.obs.publish(HA_UNLOCK, w.entity_ids["lock"].encode())
    command = w.obs.wait(lambda m: m.topic == f"{BASE}/ha/lock/set", 10, mark)
    audit = w.obs.wait(
        lambda m: m.topic == f"{BASE}/audit" and (m.json() or {}).get("action") == "ha_lock",
        10,
        mark,
    )
    reply = w.obs.wait(lambda m: m.topic == f"{BASE}/reply/ha_lock", 10, mark)
    time.sleep(PULSE_S + 2.0)  # long enough for a pulse to show in the relay log
    opened = w.door.pulses() - before
    sent = command.text() if command else None
    answer = (reply.json() or {}).get("status") if reply else None
    r.record(
        "5 HA lock.unlock refused, no pulse",
        sent == "UNLOCK" and answer == "error" and opened == 0,
        f"HA sent {sent!r} on {BASE}/ha/lock/set; door's reply {answer}; {opened} relay pulse(s)",
    )
    rec = audit.json() if audit else {}
    r.record(
        "5 HA refusal in the audit",
        bool(rec)
        and rec.get("status") == "error"
        and rec.get("signed") is False
        and rec.get("command") == "UNLOCK",
        f"audit {json.dumps({k: rec.get(k) for k in ('action', 'status', 'signed', 'command')})}"
        if rec
        else f"no ha_lock record on {BASE}/audit",
    )
    states = w.view.states()
    lock_id = w.entity_ids["lock"]
    seen = [m.text() for m in w.obs.since(mark, f"{STATESTREAM}/{lock_id.replace('.', '/')}/state")]
    stayed = not any(s in ("unlocked", "unlocking", "open", "opening") for s in seen)
    lock_state = (states or {}).get("lock", {}).get("state")
    r.record(
        "5 HA lock state stays locked",
        lock_state == "locked" and stayed,
        f"now {lock_state}; changes meanwhile: {' -> '.join(seen) or 'none'}",
    )


def check_first_logs(w: World) -> None:
    """Issue 11's 'what works': the device and entities appear with no warning in HA's log."""
    problems = [p for p in log_problems(w.ha.log, w.ha.runs) if door_related(p)]
    w.report.record(
        "0 no warning in HA's log",
        not problems,
        "none from HA's MQTT integration or naming the door (discovery, unlock, refusal)"
        if not problems
        else "; ".join(p.line() for p in problems[:5]),
    )


def check_registry(w: World) -> None:
    """HA's entity and device registries (written when HA stops) hold the door's entities."""
    entities = w.ha.registry("core.entity_registry").get("entities", [])
    by_uid = {e["unique_id"]: e for e in entities if e.get("platform") == "mqtt"}
    missing = [u for u in UNIQUE_IDS.values() if u not in by_uid]
    mismatched = [
        f"{role}: {by_uid[uid]['entity_id']} != {w.entity_ids.get(role)}"
        for role, uid in UNIQUE_IDS.items()
        if uid in by_uid and by_uid[uid]["entity_id"] != w.entity_ids.get(role)
    ]
    devices = door_devices(w)
    w.report.record(
        "0 entity and device registry",
        not missing and not mismatched and len(devices) == 1,
        f"{len(UNIQUE_IDS) - len(missing)}/{len(UNIQUE_IDS)} unique ids registered"
        f"{'; missing ' + ', '.join(missing) if missing else ''}"
        f"{'; ' + ', '.join(mismatched) if mismatched else ''}; "
        f"device: {', '.join(d.get('name') or '?' for d in devices) or 'none'}",
    )


def door_devices(w: World) -> list[dict[str, Any]]:
    devices = w.ha.registry("core.device_registry").get("devices", [])
    return [d for d in devices if ["mqtt", NODE] in d.get("identifiers", [])]


def check_ha_restart(w: World) -> None:
    """Issue 11 item 2: a restarted HA knows lock, enrolled persons and last person at once,
    and the door answers HA's birth message by publishing everything again."""
    r = w.report
    w.ha.stop()
    check_registry(w)
    door_births = w.door.log_text().count("Home Assistant is online")
    mark = w.obs.mark()
    w.ha.start(w.obs, HA_START_S)
    states = w.view.states()
    asked = time.monotonic() - w.ha.birth_at
    person = (states or {}).get("last_person", {}).get("state")
    r.record(
        "2 HA restart: states known at once",
        real(states) and person == f"remote:{REMOTE_REASON}",
        f"first answer {asked:.1f} s after HA's birth: {show(states)}",
    )
    time.sleep(3)
    after_birth = [m for m in w.obs.since(mark) if m.t >= w.ha.birth_at]
    again = {m.topic for m in after_birth if m.payload}
    wanted = {*CONFIG_TOPICS.values(), *(f"{BASE}/{t}" for t in RETAINED)}
    reacted = w.door.log_text().count("Home Assistant is online") > door_births
    r.record(
        "2 birth message: door re-publishes",
        wanted <= again and reacted,
        f"after HA's birth the door sent {len(wanted & again)}/{len(wanted)} of its configs and "
        f"retained topics{'' if reacted else '; no birth line in the door log'}"
        + (f"; missing {sorted(wanted - again)}" if wanted - again else ""),
    )


def wipe_retained(w: World) -> dict[str, bytes]:
    """Delete the door's retained messages from the broker behind its back; what is left."""
    topics = [*CONFIG_TOPICS.values(), *(f"{BASE}/{t}" for t in RETAINED)]
    for t in topics:
        w.obs.publish(t, b"", retain=True)
    return retained_now(w.broker.port, topics)


def check_birth_alone(w: World) -> None:
    """Item 2 isolated: with HA down, the door's retained messages vanish from the broker
    while the door stays connected; only its answer to HA's birth can bring them back."""
    w.ha.stop()
    left = wipe_retained(w)
    if left:
        w.report.record("2 birth alone restores wiped retained", False, f"wipe failed: {left}")
        return
    w.ha.start(w.obs, HA_START_S)
    states, at = w.view.poll(real, 15)
    took = f"{at - w.ha.birth_at:.1f} s after HA's birth" if at else "not within 15 s"
    w.report.record(
        "2 birth alone restores wiped retained",
        at is not None and at - w.ha.birth_at <= QUICK_S,
        f"nothing retained when HA started; real states {took}: {show(states)}",
    )


def restart_broker(w: World) -> float:
    """mosquitto stopped and started on the same port, without persistence; its up time."""
    say("restarting mosquitto (SIGTERM, same port, no persistence)")
    w.broker.stop()
    w.broker.start()
    return time.monotonic()


def wait_door_retained(w: World, since: float) -> tuple[dict[str, bytes], float | None]:
    """Poll as a new subscriber until the door's retained state, lock, availability, last
    person and configs are on the broker again."""
    topics = [*CONFIG_TOPICS.values(), *(f"{BASE}/{t}" for t in RETAINED)]
    got: dict[str, bytes] = {}
    while time.monotonic() - since < 30:
        got = retained_now(w.broker.port, topics, settle_s=0.3)
        if all(got.get(t) for t in topics):
            return got, time.monotonic()
        time.sleep(0.2)
    return got, None


def check_broker_restart_ha_down(w: World) -> None:
    """Issue 11 item 1 as reported: the broker restarts without persistence, then HA."""
    r = w.report
    w.ha.stop()
    up = restart_broker(w)
    got, at = wait_door_retained(w, up)
    lock, state = got.get(f"{BASE}/lock"), got.get(f"{BASE}/state")
    r.record(
        "1 broker restart: door's retained back",
        at is not None and at - up <= QUICK_S,
        (f"all {len(got)} retained topics back {at - up:.1f} s" if at else "not all within 30 s")
        + f" after the broker (HA down, so no birth message): lock={lock!r}, "
        f"state count={(json.loads(state) if state else {}).get('count')}",
    )
    w.ha.start(w.obs, HA_START_S)
    states = w.view.states()
    r.record(
        "1 HA restarted after broker restart",
        real(states),
        f"first answer {time.monotonic() - w.ha.birth_at:.1f} s after HA's birth: {show(states)}",
    )


def check_broker_restart_ha_up(w: World) -> None:
    """Issue 11 item 1 under a running HA: how long until its states are real again, and
    what it shows meanwhile."""
    mark = w.obs.mark()
    down = datetime.now()
    up = restart_broker(w)
    states, at = w.view.poll(real, 60, step=0.2)
    # HA's paho reconnects on its own; its birth says it subscribed again.
    birth = w.obs.wait(lambda m: m.topic == BIRTH and m.payload == b"online", 15, mark)
    time.sleep(2)  # statestream's late publishes of the outage
    w.outages.append((down, datetime.now()))
    timeline = statestream_timeline(
        w.obs, mark, {r: w.entity_ids[r] for r in CORE_ROLES if r in w.entity_ids}, up
    )
    reconnect = f"HA's birth {birth.t - up:.1f} s" if birth else "no HA birth"
    took = f"{at - up:.1f} s after the broker was back" if at else "not within 60 s"
    w.report.record(
        "1 broker restart under running HA",
        at is not None and at - up <= FEW_S,
        f"real states {took} ({reconnect}): {show(states)}",
    )
    # HA keeps its entities' last values in memory over its own reconnect, so this check
    # mostly measures HA; the door's side is "broker restart: door's retained back".
    w.report.note(
        "HA's states around the broker restart (statestream; seconds since the broker was "
        "back; what HA published while disconnected arrives after its reconnect): "
        + (", ".join(timeline) or "no state change published")
    )


def check_entities_removed(w: World) -> None:
    """Issue 11 item 3: snapshots off drops the image entity; discovery off drops them all."""
    r = w.report
    w.door.stop()
    w.door.start(w.obs, snapshot=False)
    states, at = w.view.poll(lambda s: "snapshot" not in s and all(x in s for x in CORE_ROLES), 15)
    r.record(
        "3 snapshots off: image entity removed",
        at is not None,
        f"HA's MQTT entities now: {sorted(s['entity_id'] for s in (states or {}).values())}",
    )
    w.door.stop()
    w.door.start(w.obs, discovery=False)
    states, at = w.view.poll(lambda s: not s, 15)
    r.record(
        "3 discovery off: entities removed",
        at is not None,
        f"HA's MQTT entities now: {sorted(s['entity_id'] for s in (states or {}).values())}"
        if states is not None
        else "HA did not answer",
    )
    w.ha.stop()
    entities = w.ha.registry("core.entity_registry").get("entities", [])
    left = [e["entity_id"] for e in entities if e.get("unique_id") in UNIQUE_IDS.values()]
    devices = door_devices(w)
    r.record(
        "3 registry cleared after discovery off",
        not left and not devices,
        f"entities left {left or 'none'}; door device "
        f"{'still registered' if devices else 'removed'}",
    )


def check_all_logs(w: World) -> None:
    """Door-related warnings in every HA run, apart from the deliberate broker outage."""
    problems: list[LogProblem] = []
    for run in range(1, w.ha.runs + 1):
        problems += log_problems(w.work / f"ha-run{run}.log", run)

    def in_outage(p: LogProblem) -> bool:
        return any(a <= p.when <= b for a, b in w.outages)

    bad = [p for p in problems if door_related(p) and not in_outage(p)]
    for p in problems:
        if in_outage(p):
            w.report.note(f"HA during the broker restart: {p.line()}")
        elif instrument(p):
            w.report.note(f"HA's statestream (this script's instrument): {p.line()}")
        elif not door_related(p):
            w.report.note(f"HA, not about the door: {p.line()}")
    w.report.record(
        "- door-related warnings in HA's logs",
        not bad,
        f"{len(bad)} in {w.ha.runs} HA runs outside the deliberate broker outage"
        + (": " + "; ".join(p.line() for p in bad[:5]) if bad else ""),
    )


def check_door_log(w: World) -> None:
    bad = [
        line
        for line in w.door.log_text().splitlines()
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
    ]
    w.report.record(
        "- door log free of errors",
        not bad,
        "no ERROR or traceback" if not bad else "; ".join(bad[:5]),
    )


def run_checks(w: World, first_ha_start_s: float) -> None:
    first_start(w, first_ha_start_s)
    check_remote_unlock(w)
    check_ha_lock_refused(w)
    check_first_logs(w)
    check_ha_restart(w)
    check_birth_alone(w)
    check_broker_restart_ha_down(w)
    check_broker_restart_ha_up(w)
    check_entities_removed(w)
    check_all_logs(w)
    check_door_log(w)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hass", required=True, help="the hass executable of HA's venv")
    ap.add_argument(
        "--door-python", default=sys.executable, help="python with the project installed"
    )
    ap.add_argument(
        "--door-root",
        type=Path,
        default=REPO,
        help="checkout whose edge/ the door runs (default: this one)",
    )
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir after a passing run")
    ap.add_argument(
        "--first-start-timeout",
        type=float,
        default=FIRST_HA_START_S,
        help="seconds HA may take to come up the first time (it may pip-install packages)",
    )
    return ap.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    # Once: a second signal must not cut short the clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (from ha_check.sh's trap) unwinds like Ctrl-C, so every process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="maskgate-ha-check-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"work dir {work}")
    report: Report | None = None
    crashed = False
    try:
        with running(work, args) as w:
            report = w.report
            run_checks(w, args.first_start_timeout)
    except (Exception, KeyboardInterrupt) as err:
        crashed = True
        print(f"\nABORTED: {type(err).__name__}: {err}", flush=True)
    if report is not None:
        print(report.summary(), flush=True)
    ok = report is not None and report.passed and not crashed
    if ok and not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work} (door.log, ha-run*.log, broker/mosquitto.log)")
    print("RESULT:", "all checks passed" if ok else "FAILED", flush=True)
    return 0 if ok else 2 if crashed else 1


if __name__ == "__main__":
    sys.exit(main())
