"""The fleet's one MQTT connection: door reports in (availability, state, events, audit,
replies), signed requests out. Callbacks only queue; the fleet's loop does the work."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.config import BrokerConfig

log = logging.getLogger(__name__)

# What the fleet follows on every door (base = <prefix>/<device id>).
FOLLOWED = ("availability", "state", "event", "audit", "reply/#")


@dataclass(frozen=True)
class Report:
    device_id: str
    kind: str  # availability, state, event, audit, reply
    payload: bytes
    retained: bool
    received: float  # time.time() when it reached the fleet


class Link:
    def __init__(self, cfg: BrokerConfig, client_id: str | None = None, session_s: int = 0) -> None:
        """`session_s` > 0 (the watch service): a persistent session, so events and audit
        records published while the fleet is down are queued by the broker and stored later."""
        self.cfg = cfg
        self.session_s = session_s
        self.prefix = cfg.prefix.strip("/")
        self.reports: queue.Queue[Report] = queue.Queue()
        self.connected = threading.Event()
        self.connects = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or cfg.client_id or f"maskgate-fleet-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        if cfg.username is not None:
            pw = cfg.password.get_secret_value() if cfg.password else None
            self._client.username_pw_set(cfg.username, pw)
        if cfg.tls:
            self._client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
            )
        self._client.reconnect_delay_set(1, 5)
        # Hundreds of requests go out at once on a revocation; paho's default of 20 in flight
        # would make them wait for PUBACKs one window at a time.
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        props = None
        if self.session_s > 0:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_s
        self._client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=self.session_s <= 0,
            properties=props,
        )
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1; False when paho refused it (not connected): the caller resends later."""
        info = self._client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _on_connect(self, client: mqtt.Client, _u, _f, reason, _p) -> None:
        if reason.is_failure:
            log.error("broker refused the fleet's connection: %s", reason)
            return
        self.connects += 1
        client.subscribe([(f"{self.prefix}/+/{t}", 1) for t in FOLLOWED])
        log.info("connected to %s:%d", self.cfg.host, self.cfg.port)
        self.connected.set()

    def _on_disconnect(self, _c, _u, _f, reason, _p) -> None:
        self.connected.clear()
        log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        head = self.prefix.split("/")
        if parts[: len(head)] != head or len(parts) < len(head) + 2:
            return
        device_id, kind = parts[len(head)], parts[len(head) + 1]
        report = Report(device_id, kind, bytes(msg.payload), bool(msg.retain), time.time())
        self.reports.put(report)
