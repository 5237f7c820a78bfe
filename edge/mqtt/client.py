"""The door's MQTT service: one paho (MQTT v5) connection, requests in, events and state out.

Threads:
  * paho's network thread runs the connection, reconnects with backoff and calls the on_*
    callbacks. Callbacks never block and never raise (an exception would kill that thread).
  * two request lanes, each a worker thread with a bounded queue, verify requests, call the
    handler and publish the reply, so a slow enrollment never stalls keepalive. The fast lane
    takes unlock, delete, list and Home Assistant's lock commands (small, quick); the slow lane
    takes enroll and sync (photos through the pipeline, big syncs) and anything unknown. An
    unlock therefore never waits behind a photo, and a flood on one lane cannot fill the other.
  * publish_* may be called from any thread.

Events, audit records, state and the lock state go through the durable outbox (QoS 1): on
disk before the publish, deleted on the broker's PUBACK, re-sent after an outage or a crash.
Every retained topic the door owns (availability, state, lock, last person, discovery) is
published again on every (re)connect and whenever Home Assistant announces itself on
<discovery_prefix>/status, so a broker without persistence or a restarted HA gets them back.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel

from edge import __version__
from edge.config import MqttConfig, SecurityConfig
from edge.mqtt.discovery import (
    LOCKED,
    OFFLINE,
    ONLINE,
    UNLOCKED,
    discovery_configs,
    last_person_state,
    unwanted_config_topics,
)
from edge.mqtt.messages import DoorState, Event, Reply
from edge.mqtt.nonces import NonceLedger
from edge.mqtt.outbox import Outbox
from edge.mqtt.signing import RequestRefused, VerifiedRequest, Verifier
from edge.mqtt.topics import HA_LOCK_REPLY, Topics

log = logging.getLogger(__name__)

Handler = Callable[[str, BaseModel, VerifiedRequest], Mapping[str, Any] | None]

OUTBOX_FILE = "mqtt-outbox.db"
NONCES_FILE = "replay-nonces.db"  # every accepted signed request's nonce (edge.mqtt.nonces)
# Requests waiting on a lane: beyond either bound a request is answered "busy".
QUEUE_SIZE = 256
MAX_QUEUED_BYTES = 128 * 1024 * 1024  # the slow lane (photos); the fast lane holds small ones
FAST_ACTIONS = frozenset({"unlock", "delete", "list"})
# A real unlock, delete or list is a few hundred bytes; bigger ones are refused at once, so the
# fast lane's memory stays small (QUEUE_SIZE × this) whatever arrives.
MAX_FAST_REQUEST_BYTES = 64 * 1024
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024
MAX_AUDIT_BYTES = 256 * 1024
# Home Assistant's birth messages closer than this re-announce once (a flood costs nothing).
BIRTH_MIN_INTERVAL_S = 1.0
# PUBACK reasons that will never turn into success: drop the row instead of retrying forever.
_PERMANENT_PUBACK = {0x87, 0x90, 0x95, 0x99}  # not authorized, bad topic, too large, bad format


class RequestFailed(Exception):
    """Raised by a handler for a request it understood but cannot do; the message is the reply,
    `reason` its machine-readable cause where there is one (e.g. `no_person`)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Incoming:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None
    seq: int = 0  # arrival order across both lanes
    received: float = 0.0  # time.monotonic() at arrival


@dataclass
class _Lane:
    name: str
    max_bytes: int
    queue: queue.Queue[_Incoming] = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    queued_bytes: int = 0
    worker: threading.Thread | None = None


def _guard(fn: Callable[..., None]) -> Callable[..., None]:
    # paho re-raises callback exceptions and its network thread dies with them: log instead.
    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    wrapper.__name__ = fn.__name__
    return wrapper


class MqttService:
    """MQTT for one door. `start()`, then publish_*; requests go to `handler` on a worker.

    handler(action, payload_model, verified) returns the reply's result (a JSON-able dict,
    or None for {}), raises RequestFailed(reason) for a readable refusal; any other exception
    becomes "internal error" in the reply and is logged with its traceback.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        security: SecurityConfig,
        state_dir: Path,
        handler: Handler,
        *,
        resolve: Callable[[Path], Path] | None = None,
        sw_version: str = __version__,
        clock: Callable[[], float] = time.time,
        reconnect_delay_s: tuple[int, int] = (1, 30),
    ) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.prefix, cfg.device_id, cfg.discovery_prefix)
        self.nonces = NonceLedger(Path(state_dir) / NONCES_FILE, clock=clock)
        self.verifier = Verifier(
            security, cfg.device_id, cfg.prefix, clock=clock, nonces=self.nonces
        )
        try:
            self.outbox = Outbox(Path(state_dir) / OUTBOX_FILE)
        except Exception:
            self.nonces.close()
            raise
        self._handler = handler
        self._sw_version = sw_version
        self._resolve = resolve or (lambda p: p)

        self._fast = _Lane("fast", QUEUE_SIZE * MAX_FAST_REQUEST_BYTES)
        self._slow = _Lane("slow", MAX_QUEUED_BYTES)
        self._queue_lock = threading.Lock()  # both lanes' byte counts and the arrival counter
        self._seq = 0
        self._stop_event = threading.Event()
        self._net_thread: threading.Thread | None = None

        # Outbox publishing: _pub_lock serialises publishes so a PUBACK that arrives before
        # publish() returns (paho fires on_publish under its own lock) is matched by _early.
        self._pub_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._inflight_ids: set[int] = set()
        self._assigning = False
        self._early: dict[int, ReasonCode | None] = {}

        self._state_lock = threading.Lock()
        self._started = self._stopping = self._stopped = False
        self._connected = False
        self._subscribed = threading.Event()  # the request subscription is acknowledged
        self._last_up = time.monotonic()  # last time connected (or started)
        self._fail_logged = False
        self._locked: bool | None = None
        # The newest payload of each retained topic the door owns, re-published on (re)connect
        # and on Home Assistant's birth message: a broker without persistence forgets them.
        self._retained: dict[str, bytes] = {}
        self._request_sub_mid: int | None = None
        self._last_birth = -math.inf
        try:
            self._client = self._make_client(reconnect_delay_s)
        except Exception:
            self.outbox.close()
            self.nonces.close()
            raise

    # ---------------------------------------------------------------- setup

    def _make_client(self, reconnect_delay_s: tuple[int, int]) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"maskgate-{cfg.device_id}",
            protocol=mqtt.MQTTv5,
        )
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password else None
            client.username_pw_set(cfg.username, password)
        elif cfg.password is not None:
            log.warning("mqtt.password is set without mqtt.username: it is not sent")
        if cfg.tls:
            files = {
                "ca_file": cfg.ca_file,
                "cert_file": cfg.cert_file,
                "key_file": cfg.key_file,
            }
            paths = {k: str(self._resolve(v)) if v else None for k, v in files.items()}
            for k, p in paths.items():
                if p is not None and not Path(p).is_file():
                    raise ValueError(f"mqtt.{k}: {p} does not exist")
            try:
                client.tls_set(
                    ca_certs=paths["ca_file"],
                    certfile=paths["cert_file"],
                    keyfile=paths["key_file"],
                )
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                raise ValueError(f"mqtt TLS setup failed: {err}") from None
        elif cfg.ca_file or cfg.cert_file or cfg.key_file:
            log.warning("mqtt.tls is off: ca_file, cert_file and key_file are ignored")
        # The broker publishes this if the door vanishes without a clean disconnect.
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(*reconnect_delay_s)
        client.connect_timeout = cfg.connect_timeout_s
        client.on_connect = _guard(self._on_connect)
        client.on_connect_fail = _guard(self._on_connect_fail)
        client.on_disconnect = _guard(self._on_disconnect)
        client.on_message = _guard(self._on_message)
        client.on_publish = _guard(self._on_publish)
        client.on_subscribe = _guard(self._on_subscribe)
        return client

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the request worker."""
        with self._state_lock:
            if self._started:
                return
            self._started = True
        self._last_up = time.monotonic()
        for lane in (self._fast, self._slow):
            lane.worker = threading.Thread(
                target=self._work, args=(lane,), name=f"mqtt-{lane.name}-requests", daemon=True
            )
            lane.worker.start()
        log.info(
            "MQTT: connecting to %s:%s as %s (topics under %s/)",
            self.cfg.host,
            self.cfg.port,
            self.cfg.username or "(anonymous)",
            self.topics.base,
        )
        self._client.connect_async(
            self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True
        )
        self._client.loop_start()
        # loop_start keeps its thread here; alive() watches it.
        self._net_thread = getattr(self._client, "_thread", None)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, let pending messages drain (bounded), disconnect. Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = self._stopping = True
            started = self._started
        if started:
            deadline = time.monotonic() + timeout_s
            self._stop_event.set()
            for lane in (self._fast, self._slow):
                if lane.worker is not None:
                    lane.worker.join(max(0.1, deadline - time.monotonic()))
            if self._connected:
                info = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
                while time.monotonic() < deadline and self._connected:
                    with self._map_lock:
                        drained = not self._inflight
                    if drained and _published(info):
                        break
                    time.sleep(0.02)
            self._client.disconnect()
            self._client.loop_stop()
            self._connected = False
        left = self.outbox.count()
        if left:
            log.warning("MQTT stopped with %d message(s) in the outbox; sent at next start", left)
        self.outbox.close()
        self.nonces.close()

    # ---------------------------------------------------------------- health

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ready(self) -> bool:
        """Connected and subscribed to requests: a request published now will be seen."""
        return self._connected and self._subscribed.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def alive(self, max_disconnected_s: float = 120.0) -> bool:
        """The network and lane threads run and the broker was reachable recently."""
        threads = (self._net_thread, self._fast.worker, self._slow.worker)
        if not all(t is not None and t.is_alive() for t in threads):
            return False
        return self._connected or time.monotonic() - self._last_up < max_disconnected_s

    def pending(self) -> int:
        """Messages in the outbox not yet acknowledged by the broker."""
        return self.outbox.count()

    # ---------------------------------------------------------------- publishing

    def publish_event(self, event: Event | Mapping[str, Any]) -> str:
        """A decision (QoS 1, through the outbox), and the retained last-person state for
        Home Assistant; returns its event_id."""
        ev = event if isinstance(event, Event) else Event.model_validate(dict(event))
        self._send_durable(self.topics.event, ev.model_dump_json().encode())
        last = _json_bytes(last_person_state(ev.model_dump(mode="json")), "last person")
        self._send_durable(self.topics.last_person, last, retain=True)
        return ev.event_id

    def publish_audit(self, record: Mapping[str, Any]) -> None:
        """An audit record (a JSON object; QoS 1, through the outbox)."""
        if not isinstance(record, Mapping):
            raise TypeError(f"an audit record is a mapping, not {type(record).__name__}")
        data = _json_bytes(dict(record), "audit record")
        if len(data) > MAX_AUDIT_BYTES:
            raise ValueError(f"audit record of {len(data)} bytes exceeds {MAX_AUDIT_BYTES}")
        self._send_durable(self.topics.audit, data)

    def publish_state(self, state: DoorState | Mapping[str, Any]) -> None:
        """The template set's version, hash, count and model id (retained, QoS 1)."""
        st = state if isinstance(state, DoorState) else DoorState.model_validate(dict(state))
        self._send_durable(self.topics.state, st.model_dump_json().encode(), retain=True)

    def publish_lock(self, locked: bool) -> None:
        """The lock state for Home Assistant (retained, QoS 1)."""
        self._locked = bool(locked)
        payload = (LOCKED if locked else UNLOCKED).encode()
        self._send_durable(self.topics.lock, payload, retain=True)

    def publish_snapshot(self, jpeg: bytes) -> bool:
        """The deciding frame as JPEG (QoS 0, not kept); False when off or not connected."""
        if not self.cfg.snapshot:
            return False
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise TypeError(f"snapshot must be JPEG bytes, not {type(jpeg).__name__}")
        jpeg = bytes(jpeg)
        if not jpeg.startswith(b"\xff\xd8"):
            raise ValueError("snapshot is not a JPEG (no SOI marker)")
        if len(jpeg) > MAX_SNAPSHOT_BYTES:
            raise ValueError(f"snapshot of {len(jpeg)} bytes exceeds {MAX_SNAPSHOT_BYTES}")
        if not self._connected:
            return False
        info = self._client.publish(self.topics.snapshot, jpeg, qos=0)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _send_durable(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._stopped:
            raise RuntimeError("the MQTT service is stopped; stop the door loop before it")
        with self._pub_lock:
            if retain:
                self._retained[topic] = payload
            # Retained topics keep only their newest pending value.
            oid = self.outbox.put(topic, payload, qos=1, retain=retain, coalesce=retain)
            if self._started and not self._stopped:
                self._publish_row(oid, topic, payload, 1, retain)

    def _publish_row(self, oid: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        # Caller holds _pub_lock. Paho queues QoS 1 messages while disconnected and re-sends
        # them after a reconnect, so a row is handed to paho once per process.
        with self._map_lock:
            self._assigning = True
            self._early.clear()
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        finally:
            with self._map_lock:
                self._assigning = False
        with self._map_lock:
            early = info.mid in self._early
            reason = self._early.pop(info.mid, None)
            self._early.clear()
            queued = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
            if not early and queued:
                self._inflight[info.mid] = oid
                self._inflight_ids.add(oid)
        if early:
            self._acked(oid, reason)
        elif not queued:
            log.warning(
                "paho did not queue outbox message %d (%s); retried on reconnect", oid, info.rc
            )

    def _publish_pending(self) -> None:
        # Rows paho does not hold (left by an earlier run, or refused before): send them now.
        with self._pub_lock:
            rows = self.outbox.pending()
            with self._map_lock:
                held = set(self._inflight_ids)
            fresh = [r for r in rows if r.id not in held]
            if fresh:
                log.info("MQTT: sending %d message(s) from the outbox", len(fresh))
            for r in fresh:
                self._publish_row(r.id, r.topic, r.payload, r.qos, r.retain)

    def _acked(self, oid: int, reason: ReasonCode | None) -> None:
        if reason is not None and reason.is_failure:
            if reason.value in _PERMANENT_PUBACK:
                log.error("broker refused outbox message %d for good (%s): dropped", oid, reason)
            else:
                log.warning(
                    "broker refused outbox message %d (%s): retried on reconnect", oid, reason
                )
                return
        self.outbox.remove(oid)

    # ---------------------------------------------------------------- paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:  # bad credentials, client id refused, ...: paho retries
            self._connect_failed(logging.ERROR, f"the broker refused the connection: {reason}")
            return
        self._connected = True
        self._fail_logged = False
        self._last_up = time.monotonic()
        log.info("MQTT: connected to %s:%s", self.cfg.host, self.cfg.port)
        # retainAsPublished: a request published with retain is seen as such and refused.
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        _, self._request_sub_mid = client.subscribe(
            [(self.topics.request_filter, opts), (self.topics.ha_lock_set, opts)]
        )
        # Apart: a broker ACL that hides HA's birth topic must not keep requests out.
        client.subscribe(self.topics.ha_status, qos=1)
        self._announce()
        self._publish_pending()

    def _announce(self) -> None:
        """Publish every retained topic the door owns: availability, discovery (clearing the
        configs it no longer wants), and the newest state, lock and last person."""
        self._client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        wanted = (
            discovery_configs(self.topics, self._sw_version, self.cfg.snapshot)
            if self.cfg.discovery
            else []
        )
        for topic, conf in wanted:
            self._client.publish(topic, json.dumps(conf), qos=1, retain=True)
        for topic in unwanted_config_topics(self.topics, wanted):
            self._client.publish(topic, b"", qos=1, retain=True)  # HA drops the entity
        with self._pub_lock:
            retained = list(self._retained.items())
        for topic, payload in retained:
            self._send_durable(topic, payload, retain=True)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._connect_failed(logging.WARNING, "cannot reach the broker (or TLS failed)")

    def _connect_failed(self, level: int, why: str) -> None:
        # Logged once per outage, then at DEBUG: paho keeps retrying with backoff.
        log.log(
            logging.DEBUG if self._fail_logged else level,
            "MQTT %s:%s: %s; retrying",
            self.cfg.host,
            self.cfg.port,
            why,
        )
        self._fail_logged = True

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected
        self._connected = False
        self._subscribed.clear()
        if self._stopping:
            return
        if was:
            self._last_up = time.monotonic()
            log.warning("MQTT: disconnected (%s); reconnecting", reason)
        else:  # dropped during the handshake, e.g. a client certificate the broker refused
            self._connect_failed(logging.WARNING, f"connection dropped before CONNACK: {reason}")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [rc for rc in reasons if rc.is_failure]
        if mid != self._request_sub_mid:  # Home Assistant's birth topic
            for rc in refused:
                log.warning(
                    "MQTT: the broker refused %s (%s): a restarted Home Assistant gets the door's "
                    "configs and states only at the door's next reconnect",
                    self.topics.ha_status,
                    rc,
                )
            return
        for rc in refused:
            log.error("MQTT: the broker refused the request subscription: %s", rc)
        if not refused:
            self._subscribed.set()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._map_lock:
            oid = self._inflight.pop(mid, None)
            if oid is None:
                if self._assigning:
                    self._early[mid] = reason
                return
            self._inflight_ids.discard(oid)
        self._acked(oid, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.ha_status:
            self._on_ha_status(bytes(msg.payload))
            return
        item = _Incoming(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties)
        item.received = time.monotonic()
        size = len(item.payload)
        fast = (
            item.topic == self.topics.ha_lock_set
            or self.topics.action_of(item.topic) in FAST_ACTIONS
        )
        lane = self._fast if fast else self._slow
        why = None
        if fast and size > MAX_FAST_REQUEST_BYTES:
            why = f"request of {size} bytes is too large for {item.topic.rsplit('/', 1)[-1]}"
        with self._queue_lock:
            self._seq += 1
            item.seq = self._seq
            if why is None and self._stopping:
                why = "shutting down"
            elif why is None and lane.queued_bytes + size > lane.max_bytes:
                why = "busy: too many requests waiting"
            elif why is None:
                try:
                    lane.queue.put_nowait(item)
                    lane.queued_bytes += size
                except queue.Full:
                    why = "busy: too many requests waiting"
        if why is not None:
            log.warning("MQTT: %s, refusing a request on %s", why, item.topic)
            self._reply(item, _peek_id(item.payload), error=why)

    def _on_ha_status(self, payload: bytes) -> None:
        # HA subscribes with a clean session and says `online` once it is back: only then can it
        # see what the door publishes, so publish everything retained again.
        now = time.monotonic()
        if payload.strip() != ONLINE.encode() or now - self._last_birth < BIRTH_MIN_INTERVAL_S:
            return
        self._last_birth = now
        log.info("MQTT: Home Assistant is online; publishing discovery and states again")
        self._announce()

    # ---------------------------------------------------------------- requests

    def _work(self, lane: _Lane) -> None:
        while not self._stop_event.is_set():
            try:
                item = lane.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._queue_lock:
                lane.queued_bytes -= len(item.payload)
            try:
                self._handle(item)
            except Exception:  # the worker must outlive any request
                log.exception("MQTT: request on %s failed", item.topic)

    def _handle(self, item: _Incoming) -> None:
        if item.topic == self.topics.ha_lock_set:
            self._refuse_ha(item)
            return
        try:
            req = self.verifier.verify(item.topic, item.payload, item.retain)
        except RequestRefused as err:
            log.warning("MQTT: refused request %s on %s: %s", err.request_id, item.topic, err)
            self._reply(item, err.request_id, error=err.reason, reason=err.code)
            return
        except Exception as err:  # a bug in checking must still answer, and never act
            log.exception("MQTT: checking a request on %s failed", item.topic)
            self._reply(item, _peek_id(item.payload), error=f"internal error: {type(err).__name__}")
            return
        req = replace(req, seq=item.seq, received=item.received)
        log.info(
            "MQTT: %s request %s (%s)",
            req.action,
            req.id,
            f"signed by {req.key_id}" if req.signed else "unsigned",
        )
        try:
            result = self._handler(req.action, req.payload, req)
            if result is not None and not isinstance(result, Mapping):
                raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
            result = dict(result or {})
        except RequestFailed as err:
            self._reply(item, req.id, error=str(err) or "failed", reason=err.reason)
            return
        except Exception as err:
            log.exception("MQTT: handler failed on %s request %s", req.action, req.id)
            self._reply(item, req.id, error=f"internal error: {type(err).__name__}: {err}"[:500])
            return
        self._reply(item, req.id, result=result)

    def _refuse_ha(self, item: _Incoming) -> None:
        log.warning(
            "MQTT: Home Assistant sent %r to the lock: refused, HA commands are unsigned",
            item.payload[:32],
        )
        error = (
            "refused: Home Assistant cannot sign commands; send a signed unlock request "
            f"to {self.topics.request('unlock')} (maskgate sign)"
        )
        self._reply(item, None, error=error, action=HA_LOCK_REPLY)
        # The audit covers every unlock request and its outcome, unsigned ones included.
        command = item.payload[:32].decode("utf-8", "backslashreplace")
        self.publish_audit(
            {
                "time": time.time(),
                "action": HA_LOCK_REPLY,
                "request_id": None,
                "key_id": None,
                "signed": False,
                "command": command,
                "status": "error",
                "error": error,
            }
        )
        if self._locked is not None:  # HA's lock card falls back to the real state
            self.publish_lock(self._locked)

    def _reply(
        self,
        item: _Incoming,
        request_id: str | None,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        action: str | None = None,
        reason: str | None = None,
    ) -> None:
        data = _reply_bytes(request_id, error, result, reason)
        name = action or self.topics.action_of(item.topic) or "unknown"
        topic = self.topics.reply(name)
        props = None
        incoming = item.properties
        response_topic = getattr(incoming, "ResponseTopic", None) if incoming else None
        correlation = getattr(incoming, "CorrelationData", None) if incoming else None
        # Only under our own reply prefix: a requester (even an unsigned one) must not steer
        # the door's publications onto its lock, state, event or discovery topics.
        if _usable_response_topic(response_topic) and response_topic.startswith(
            self.topics.reply("")
        ):
            topic = response_topic
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        try:
            self._client.publish(topic, data, qos=1, properties=props)
        except ValueError as err:  # an odd ResponseTopic paho refuses: fall back
            log.warning("MQTT: cannot reply on %r (%s); using %s", topic, err, name)
            self._client.publish(self.topics.reply(name), data, qos=1, properties=props)


def _clean_text(text: str) -> str:
    # A lone surrogate (JSON allows "\ud800") cannot be encoded: show it escaped instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _reply_bytes(
    request_id: str | None,
    error: str | None,
    result: dict[str, Any] | None,
    reason: str | None = None,
) -> bytes:
    """The reply's JSON; never raises, so every request is answered."""
    rid = _clean_text(request_id) if isinstance(request_id, str) else None
    try:
        reply = Reply(
            id=rid,
            status="error" if error is not None else "ok",
            error=_clean_text(error)[:2000] if error is not None else None,
            reason=reason if error is not None else None,
            result=result if error is None else None,
        )
        return reply.model_dump_json().encode()
    except Exception as err:  # a result the model cannot carry: answer anyway, as an error
        log.error("MQTT: reply to %s could not be built: %s", rid, err)
    fallback = {
        "id": rid,
        "status": "error",
        "error": "internal error: the reply is not JSON-able",
        "result": None,
        "time": time.time(),
    }
    return json.dumps(fallback, ensure_ascii=True).encode()


def _usable_response_topic(topic: Any) -> bool:
    # An MQTT v5 ResponseTopic names where the requester listens; wildcards and $SYS are not.
    return (
        isinstance(topic, str)
        and 0 < len(topic) <= 512
        and not any(c in topic for c in "#+\0")
        and not topic.startswith("$")
    )


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # not queued: nothing to wait for
        return True


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not plain JSON: {err}") from None


def _peek_id(payload: bytes) -> str | None:
    # Best effort, on the network thread: only small payloads are parsed.
    if len(payload) > 65536:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 else None
