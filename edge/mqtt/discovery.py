"""Home Assistant MQTT discovery: what the door looks like to HA.

Published retained under <discovery_prefix>/<component>/<node_id>/<object_id>/config at every
connection and whenever Home Assistant announces itself (its birth message): a lock, an event
entity (unlock / deny / lockout), a last-person sensor, an enrolled-persons sensor and, when
snapshots are on, an image entity. All share one `device` block and the door's retained
availability topic. Configs the door no longer wants (discovery switched off, snapshots off, an
entity renamed) are cleared with an empty retained payload, so HA drops those entities.

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

# The reason of a remote (signed) unlock starts with this; no face was seen for it.
REMOTE_UNLOCK = "remote unlock: "
_HA_STATE_CHARS = 255  # HA refuses longer states

# Jinja template HA evaluates on our event JSON.
_EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.decision, 'person': value_json.person, "
    "'name': value_json.name, 'score': value_json.score, 'masked': value_json.masked, "
    "'reason': value_json.reason} | tojson }}"
)
# Every config topic this door has ever published, by (component, object_id): the ones it does
# not want now are cleared. `template_count` was the enrolled-persons sensor's first name.
_ALL_ENTITIES = (
    ("lock", "lock"),
    ("event", "access"),
    ("sensor", "last_person"),
    ("sensor", "enrolled_persons"),
    ("sensor", "template_count"),
    ("image", "snapshot"),
)


def last_person_state(event: dict[str, Any]) -> dict[str, Any]:
    """The last-person sensor's message for a decision: a state that says what happened.

    The person (display name, else id) for an unlock by face; `stranger` when nobody enrolled
    matched; `no liveness` when a match failed the liveness test; `lockout`; `remote:<reason>`
    for a signed remote unlock, whose face fields are null because no face was seen.
    """
    decision, person = event.get("decision"), event.get("person")
    reason = str(event.get("reason") or "")
    if decision == "lockout":
        state = "lockout"
    elif decision == "unlock" and person is None:
        state = "remote:" + reason.removeprefix(REMOTE_UNLOCK)
    elif decision == "unlock":
        state = str(event.get("name") or person)
    elif person is not None:
        state = "no liveness"
    else:
        state = "stranger"
    return {
        "state": state[:_HA_STATE_CHARS],
        "decision": decision,
        "person": person,
        "name": event.get("name"),
        "score": event.get("score"),
        "masked": event.get("masked"),
        "reason": reason,
        "event_id": event.get("event_id"),
        "time": event.get("time"),
    }


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
                # Retained and computed by the door (last_person_state), so a restarted HA shows
                # it at once and never confuses a stranger with its own `unknown`.
                "state_topic": topics.last_person,
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": topics.last_person,
                "icon": "mdi:account",
                **common,
            },
        ),
        (
            topics.discovery("sensor", "enrolled_persons"),
            {
                "name": "Enrolled persons",
                "unique_id": f"{node}_enrolled_persons",
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


def unwanted_config_topics(topics: Topics, wanted: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """This door's config topics not in `wanted` (all of them when discovery is off)."""
    keep = {topic for topic, _ in wanted}
    every = [topics.discovery(component, obj) for component, obj in _ALL_ENTITIES]
    return [t for t in every if t not in keep]
