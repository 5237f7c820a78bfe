"""Home Assistant MQTT discovery: what the door looks like to HA.

Published retained under <discovery_prefix>/<component>/<node_id>/<object_id>/config at every
connection: a lock, an event entity (unlock / deny / lockout), a last-person sensor, a
template-count sensor and, when snapshots are on, an image entity. All share one `device`
block and the door's retained availability topic.

The lock is read-only in practice. HA cannot sign commands, and an unsigned unlock would let
anyone who can publish to the broker open the door, so its command_topic points at
<base>/ha/lock/set, which the door answers by refusing (a reply on <base>/reply/ha_lock and a
re-sent lock state, so HA's switch falls back). Unlock from HA with a signed request sent by a
trusted server instead (see `maskgate sign`).
"""

from __future__ import annotations

from typing import Any

from edge.mqtt.topics import Topics

LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"
ONLINE, OFFLINE = "online", "offline"

# Jinja templates HA evaluates on our JSON messages.
_EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.decision, 'person': value_json.person, "
    "'name': value_json.name, 'score': value_json.score, 'masked': value_json.masked, "
    "'reason': value_json.reason} | tojson }}"
)
_PERSON_TEMPLATE = "{{ value_json.name or value_json.person or 'unknown' }}"
_PERSON_ATTRS = (
    "{{ {'person': value_json.person, 'decision': value_json.decision, "
    "'score': value_json.score, 'masked': value_json.masked, 'time': value_json.time} | tojson }}"
)


def device_block(topics: Topics, sw_version: str) -> dict[str, Any]:
    return {
        "identifiers": [topics.node_id],
        "name": f"MaskGate {topics.device_id}",
        "model": "MaskGate face-verification door",
        "manufacturer": "MaskGate",
        "sw_version": sw_version,
    }


def discovery_configs(
    topics: Topics, sw_version: str, snapshot: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) for each entity; publish each retained, QoS 1."""
    node = topics.node_id
    common = {
        "device": device_block(topics, sw_version),
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "qos": 1,
    }
    configs: list[tuple[str, dict[str, Any]]] = [
        (
            topics.discovery("lock", "lock"),
            {
                "name": "Door",
                "unique_id": f"{node}_lock",
                "state_topic": topics.lock,
                "state_locked": LOCKED,
                "state_unlocked": UNLOCKED,
                # Refused by the door (unsigned); present because HA requires it.
                "command_topic": topics.ha_lock_set,
                "payload_lock": "LOCK",
                "payload_unlock": "UNLOCK",
                "optimistic": False,
                **common,
            },
        ),
        (
            topics.discovery("event", "access"),
            {
                "name": "Access",
                "unique_id": f"{node}_access",
                "state_topic": topics.event,
                "event_types": ["unlock", "deny", "lockout"],
                "value_template": _EVENT_TEMPLATE,
                **common,
            },
        ),
        (
            topics.discovery("sensor", "last_person"),
            {
                "name": "Last person",
                "unique_id": f"{node}_last_person",
                "state_topic": topics.event,
                "value_template": _PERSON_TEMPLATE,
                "json_attributes_topic": topics.event,
                "json_attributes_template": _PERSON_ATTRS,
                "icon": "mdi:account",
                **common,
            },
        ),
        (
            topics.discovery("sensor", "template_count"),
            {
                "name": "Enrolled persons",
                "unique_id": f"{node}_template_count",
                "state_topic": topics.state,
                "value_template": "{{ value_json.count }}",
                "json_attributes_topic": topics.state,
                "state_class": "measurement",
                "icon": "mdi:account-group",
                **common,
            },
        ),
    ]
    if snapshot:
        configs.append(
            (
                topics.discovery("image", "snapshot"),
                {
                    "name": "Snapshot",
                    "unique_id": f"{node}_snapshot",
                    "image_topic": topics.snapshot,
                    "content_type": "image/jpeg",
                    **common,
                },
            )
        )
    return configs
