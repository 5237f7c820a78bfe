"""Every MQTT topic string the door uses, built in one place.

Layout (base = <prefix>/<device_id>):
  <base>/request/<action>     requests from servers (enroll, delete, list, sync, unlock)
  <base>/reply/<action>       replies, unless a request names an MQTT v5 ResponseTopic
  <base>/availability         "online" / "offline", retained, with a last will
  <base>/state                template set version, hash, count, model id; retained
  <base>/lock                 "LOCKED" / "UNLOCKED", retained (Home Assistant lock state)
  <base>/event                one JSON message per decision (QoS 1, outbox)
  <base>/last_person          the latest decision as Home Assistant's last-person sensor shows
                              it (retained)
  <base>/audit                audit records (QoS 1, outbox)
  <base>/snapshot             optional JPEG of the deciding frame
  <base>/ha/lock/set          Home Assistant's lock command topic: always refused (unsigned)
  <discovery_prefix>/<component>/<node_id>/<object_id>/config   Home Assistant discovery
  <discovery_prefix>/status   Home Assistant's birth ("online") and last will ("offline")
"""

from __future__ import annotations

import re

# Requests the door understands; only `list` is read-only and may come unsigned.
ACTIONS: tuple[str, ...] = ("enroll", "delete", "list", "sync", "unlock")
SIGNED_ACTIONS: frozenset[str] = frozenset({"enroll", "delete", "sync", "unlock"})

# The reply "action" used to answer Home Assistant's (refused) lock commands.
HA_LOCK_REPLY = "ha_lock"

_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class Topics:
    """Topic builders for one door: `Topics("maskgate", "door1")`."""

    def __init__(
        self, prefix: str, device_id: str, discovery_prefix: str = "homeassistant"
    ) -> None:
        for name, value in (("prefix", prefix), ("device_id", device_id)):
            if not value or any(c in value for c in "#+\0"):
                raise ValueError(f"{name} {value!r}: must be non-empty and free of # + NUL")
        if "/" in device_id:
            raise ValueError(f"device_id {device_id!r}: must not contain '/'")
        if not discovery_prefix or any(c in discovery_prefix for c in "#+\0"):
            raise ValueError(f"discovery_prefix {discovery_prefix!r}: must be free of # + NUL")
        self.prefix = prefix.strip("/")
        self.device_id = device_id
        self.discovery_prefix = discovery_prefix.strip("/")
        self.base = f"{self.prefix}/{device_id}"
        # HA node ids allow [A-Za-z0-9_-] only; the prefix may hold '/' or dots.
        self.node_id = _NODE_UNSAFE.sub("_", f"{self.prefix}_{device_id}")

    def request(self, action: str) -> str:
        return f"{self.base}/request/{action}"

    @property
    def request_filter(self) -> str:
        """Subscription filter for every request topic of this door."""
        return f"{self.base}/request/+"

    def reply(self, action: str) -> str:
        return f"{self.base}/reply/{action}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def lock(self) -> str:
        return f"{self.base}/lock"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def last_person(self) -> str:
        return f"{self.base}/last_person"

    @property
    def audit(self) -> str:
        return f"{self.base}/audit"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def ha_lock_set(self) -> str:
        return f"{self.base}/ha/lock/set"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself (its birth message) and its last will."""
        return f"{self.discovery_prefix}/status"

    def discovery(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    def action_of(self, topic: str) -> str | None:
        """The action segment of one of this door's request topics, else None."""
        head = f"{self.base}/request/"
        if not topic.startswith(head):
            return None
        action = topic[len(head) :]
        return action if action and "/" not in action else None
