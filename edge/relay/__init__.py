"""The door-lock relay: one backend per file, chosen by `relay.type` in config.

relay = make_relay(config.relay, config.resolve(config.daemon.state_dir))
with relay:
    relay.pulse()          # unlocked now, relocked pulse_s later by a timer thread
    relay.door_open()      # debounced contact, None without one
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import MAX_PULSE_S, Edge, Relay, RelayError, check_pulse_s
from .gpiod import GpiodRelay
from .mock import MockInput, MockLine, MockRelay

if TYPE_CHECKING:
    from ..config import RelayConfig

# Config `type` -> backend class. gpiod is only imported when a GpiodRelay is built.
BACKENDS: dict[str, type[Relay]] = {cls.type_key: cls for cls in (GpiodRelay, MockRelay)}


def make_relay(
    cfg: RelayConfig, state_dir: Path | None = None, *, door_contact: bool = True
) -> Relay:
    """The relay for a config, requested at the locked level; RelayError if the line is not
    reachable. Relative `mock_log` paths resolve against `state_dir`. door_contact=False leaves
    the contact alone (relay-safe: a broken contact must not stop the lock)."""
    cls = BACKENDS.get(cfg.type)
    if cls is None:
        raise RelayError(f"unknown relay type {cfg.type!r}; known: {', '.join(sorted(BACKENDS))}")
    return cls.from_config(cfg, state_dir=state_dir, door_contact=door_contact)


__all__ = [
    "BACKENDS",
    "MAX_PULSE_S",
    "Edge",
    "GpiodRelay",
    "MockInput",
    "MockLine",
    "MockRelay",
    "Relay",
    "RelayError",
    "check_pulse_s",
    "make_relay",
]
