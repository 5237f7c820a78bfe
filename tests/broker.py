"""A real mosquitto for tests, and a small MQTT client that waits for messages.

    from tests.broker import Mosquitto, MqttProbe      # or, inside tests/: from broker import …

`Mosquitto(workdir)` writes its own config, password file (mosquitto_passwd -b) and ACL under
workdir and listens on a free 127.0.0.1 port with anonymous access off:
  * DOOR_USER reads its request and HA lock-command topics and HA's birth topic, and writes its
    reply, availability, state, lock, event, last-person, audit and snapshot topics and HA
    discovery;
  * SERVER_USER writes requests (and, playing Home Assistant, lock commands and the birth
    message) and reads everything else;
  * FLEET_USER (the fleet service) writes requests to any door and reads every door's
    availability, state, events, audit and replies, nothing more.
`devices` gives several doors (the fleet tests): DOOR_USER gets each one's topics.
`stop()` (SIGTERM), `kill()` (SIGKILL, no goodbye) and `restart()` (same port) let tests take
the broker away under a running door. The `mosquitto` fixture is one started broker per test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.mqtt.localbroker import HOST, MOSQUITTO, LocalBroker

DOOR_USER, DOOR_PASSWORD = "door", "door-pass"
SERVER_USER, SERVER_PASSWORD = "server", "server-pass"
FLEET_USER, FLEET_PASSWORD = "fleet", "fleet-pass"

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def have_mosquitto() -> bool:
    return os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll cond until it holds; AssertionError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class Mosquitto(LocalBroker):
    """The product's LocalBroker with the tests' password file, ACL and optional TLS."""

    def __init__(
        self,
        workdir: Path,
        prefix: str = "maskgate",
        device_id: str = "door1",
        discovery_prefix: str = "homeassistant",
        persistence: bool = False,
        port: int | None = None,
        tls: bool = False,
        devices: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        super().__init__(workdir, port=port, persistence=persistence)
        self.devices = tuple(devices) if devices else (device_id,)
        # tls: the listener speaks only TLS and wants a client certificate signed by our CA
        self.tls = make_tls_files(self.workdir / "tls") if tls else None
        self.host = HOST
        self.prefix, self.device_id = prefix, device_id
        self.discovery_prefix = discovery_prefix

    def auth_lines(self) -> list[str]:
        passwd = self.workdir / "passwd"
        passwd.unlink(missing_ok=True)
        users = (
            (DOOR_USER, DOOR_PASSWORD),
            (SERVER_USER, SERVER_PASSWORD),
            (FLEET_USER, FLEET_PASSWORD),
        )
        for i, (user, pw) in enumerate(users):
            args = [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(passwd), user, pw]
            subprocess.run(args, check=True, capture_output=True, timeout=10)
        door_writes = (
            "reply/#",
            "availability",
            "state",
            "lock",
            "event",
            "last_person",
            "audit",
            "snapshot",
        )
        door = []
        for device in self.devices:
            base = f"{self.prefix}/{device}"
            door += [
                f"topic read {base}/request/#",
                f"topic read {base}/ha/lock/set",
                *(f"topic write {base}/{t}" for t in door_writes),
            ]
        acl = [
            f"user {DOOR_USER}",
            *door,
            f"topic read {self.discovery_prefix}/status",
            f"topic write {self.discovery_prefix}/#",
            "",
            f"user {SERVER_USER}",
            f"topic write {self.prefix}/+/request/#",
            f"topic write {self.prefix}/+/ha/lock/set",
            f"topic write {self.discovery_prefix}/status",  # the server also plays HA
            f"topic read {self.prefix}/#",
            f"topic read {self.discovery_prefix}/#",
            "",
            f"user {FLEET_USER}",
            f"topic write {self.prefix}/+/request/#",
            *(
                f"topic read {self.prefix}/+/{t}"
                for t in ("availability", "state", "event", "audit", "reply/#")
            ),
        ]
        (self.workdir / "acl").write_text("\n".join(acl) + "\n")
        tls = (
            [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
            if self.tls
            else []
        )
        return [
            *tls,
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {self.workdir / 'acl'}",
        ]

    def start(self, timeout: float = 10.0) -> Mosquitto:
        super().start(timeout)
        return self

    def restart(self, kill: bool = False) -> Mosquitto:
        super().restart(kill)
        return self

    def __enter__(self) -> Mosquitto:
        return self.start()

    def mqtt_config(self, **overrides: Any):  # -> edge.config.MqttConfig
        """An MqttConfig for the door user on this broker."""
        from edge.config import MqttConfig

        fields: dict[str, Any] = {
            "host": HOST,
            "port": self.port,
            "username": DOOR_USER,
            "password": DOOR_PASSWORD,
            "prefix": self.prefix,
            "device_id": self.device_id,
            "discovery_prefix": self.discovery_prefix,
            "keepalive_s": 5,
            "connect_timeout_s": 2.0,
        }
        if self.tls:
            fields |= {
                "tls": True,
                "ca_file": self.tls.ca,
                "cert_file": self.tls.client_cert,
                "key_file": self.tls.client_key,
            }
        fields.update(overrides)
        return MqttConfig(**fields)

    def probe(self, **kwargs: Any) -> MqttProbe:
        """A connected MqttProbe (server user unless told otherwise)."""
        return MqttProbe(self, **kwargs).connect()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not ca,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("MaskGate test CA"))
        .issuer_name(name("MaskGate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            ip = x509.IPAddress(ipaddress.ip_address(HOST))
            builder = builder.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path = folder / f"{cn}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, write_key(key, folder / f"{cn}.key")

    server_cert, server_key = leaf("server", server=True)
    client_cert, client_key = leaf("door", server=False)
    return TlsFiles(folder / "ca.pem", server_cert, server_key, client_cert, client_key)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Properties | None

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def correlation(self) -> bytes | None:
        return getattr(self.properties, "CorrelationData", None) if self.properties else None


class MqttProbe:
    """A test-side MQTT v5 client: subscribe, publish, and wait for messages with timeouts.

    persistent=True keeps the broker session (clean_start off, 5 min expiry), so messages
    published while the probe is away are delivered when paho reconnects it.
    """

    def __init__(
        self,
        broker: Mosquitto,
        username: str = SERVER_USER,
        password: str = SERVER_PASSWORD,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.persistent = persistent
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(username, password)
        if broker.tls:
            self._client.tls_set(
                ca_certs=str(broker.tls.ca),
                certfile=str(broker.tls.client_cert),
                keyfile=str(broker.tls.client_key),
            )
        self._client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._subs: dict[str, int] = {}
        self._subacks: dict[int, list[Any]] = {}
        self.connected = threading.Event()
        self.connect_reason: Any = None

    # paho callbacks
    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connect_reason = reason
        if reason.is_failure:
            return
        self.connected.set()
        if self._subs and not flags.session_present:
            c.subscribe([(t, SubscribeOptions(qos=q)) for t, q in self._subs.items()])

    def _on_disconnect(self, c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        self.connected.clear()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        got = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, msg.properties)
        with self._cond:
            self._messages.append(got)
            self._cond.notify_all()

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, reasons: Any, p: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reasons)
            self._cond.notify_all()

    # API
    def connect(self, timeout: float = 5.0) -> MqttProbe:
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
        self._client.connect_async(
            HOST, self.broker.port, keepalive=5, clean_start=not self.persistent, properties=props
        )
        self._client.loop_start()
        if not self.connected.wait(timeout):
            raise AssertionError(f"probe not connected within {timeout} s ({self.connect_reason})")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> MqttProbe:
        self._subs[topic] = qos
        _, mid = self._client.subscribe(topic, qos=qos)
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._subacks, timeout)
            reasons = self._subacks.get(mid, [])
        if not ok:
            raise AssertionError(f"no SUBACK for {topic} within {timeout} s")
        if any(r.is_failure for r in reasons):
            raise AssertionError(f"subscription to {topic} refused: {reasons}")
        return self

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any] | None,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> mqtt.MQTTMessageInfo:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos > 0:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise AssertionError(f"publish to {topic} not acknowledged within {timeout} s")
        return info

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            got = list(self._messages)
        return [m for m in got if topic is None or mqtt.topic_matches_sub(topic, m.topic)]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Received], bool] = lambda m: True,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[Received]:
        """At least `count` messages on topic (a filter) matching predicate, or AssertionError."""

        def matching() -> list[Received]:
            return [
                m for m in self._messages if mqtt.topic_matches_sub(topic, m.topic) and predicate(m)
            ]

        with self._cond:
            ok = self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            found = matching()
        if not ok:
            raise AssertionError(
                f"{len(found)} of {count} message(s) on {topic} within {timeout:g} s"
            )
        return found

    def wait_json(self, topic: str, key: str, value: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first JSON message on topic whose `key` equals value."""

        def match(m: Received) -> bool:
            try:
                obj = m.json()
            except ValueError:
                return False
            return isinstance(obj, dict) and obj.get(key) == value

        return self.wait_for(topic, match, timeout=timeout)[0].json()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_mosquitto(workdir: Path, **kwargs: Any) -> Iterator[Mosquitto]:
    """A started broker, stopped on exit; skips the test where mosquitto is not installed."""
    if not have_mosquitto():
        pytest.skip(f"mosquitto not installed ({MOSQUITTO})")
    broker = Mosquitto(workdir, **kwargs).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started broker (door and server users, ACLs) for one test; stopped afterwards."""
    with running_mosquitto(tmp_path / "broker") as broker:
        yield broker
