"""The fleet's loop: follow every door, compare what it reports with what the registry
expects of it, and send signed requests until they match.

Definitions (the README's "Guarantees" repeats them):
  * expected set of a door: every person in a group the door serves, with that person's
    embeddings of the door's model (persons without one are not sent);
  * expected hash: the door's own content hash of that set (fleet.expect);
  * confirmed: the door's retained state, published by the door after its store committed,
    carries the expected hash. A reply alone never confirms anything.

Requests: a door whose reported set the fleet knows (it predicted that hash) and that differs
by at most timing.max_incremental persons gets `delete` and `enroll` requests (small; deletes
take the door's fast lane); any other door gets one full `sync`. A door that has not confirmed
timing.resend_s after a request is sent again. Every hash a request should produce is recorded;
a door that reports a hash the fleet never asked for, with nothing in flight, is flagged
(tampered with, or changed locally) and re-synced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge.mqtt.messages import DoorState
from edge.mqtt.signing import sign_request
from fleet.config import TimingConfig
from fleet.expect import HashCache, enroll_payload, person_digest, sync_payload
from fleet.link import Link, Report
from fleet.registry import ExpectedPerson, Registry

log = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 100_000
SLOW_STEP_S = 1.0  # a loop longer than this is logged with where the time went


@dataclass
class DoorLive:
    """What the fleet knows of one door right now."""

    device_id: str
    online: bool = False
    last_seen: float | None = None
    version: int | None = None
    hash: str | None = None
    count: int | None = None
    state_time: float | None = None
    confirmed_hash: str | None = None
    confirmed_time: float | None = None
    flagged: str | None = None
    flagged_time: float | None = None
    last_event: float | None = None
    last_sent: float = -1e18
    sent_for: str | None = None  # the expected hash the last request aimed at
    attempts: int = 0  # requests sent for sent_for without a confirmation
    # Requests not answered yet (id -> when sent, the fleet's connection count then): while
    # one may still act, the same change is not sent again (a copy would only add load, or
    # a refused second delete).
    outstanding: dict[str, tuple[float, int]] = field(default_factory=dict)
    syncing: bool = False  # the last request was a full sync
    known: set[str] = field(default_factory=set)  # hashes the fleet asked this door to hold
    # Sets the fleet predicted, by their hash: the base for incremental requests.
    believed: dict[str, dict[str, ExpectedPerson]] = field(default_factory=dict)
    dirty: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "online": int(self.online),
            "last_seen": self.last_seen,
            "version": self.version,
            "hash": self.hash,
            "count": self.count,
            "state_time": self.state_time,
            "confirmed_hash": self.confirmed_hash,
            "confirmed_time": self.confirmed_time,
            "flagged": self.flagged,
            "flagged_time": self.flagged_time,
            "last_event": self.last_event,
        }


@dataclass
class Expected:
    model_id: str
    persons: dict[str, ExpectedPerson]
    hash: str


class Fleet:
    """The registry and the doors, reconciled. Call `step()` often (or `run()`), from one
    thread: the registry connection and the door table belong to that thread."""

    def __init__(
        self,
        registry: Registry,
        link: Link,
        key: Ed25519PrivateKey,
        timing: TimingConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.link = link
        self.key = key
        self.timing = timing
        self.clock = clock
        self.doors: dict[str, DoorLive] = {}
        self.expected: dict[str, Expected] = {}
        self._revision = -1
        self._hashes = HashCache()
        self._set_hashes: dict[tuple[str, frozenset[tuple[str, str]]], str] = {}
        self._diffs: dict[tuple[str | None, str], tuple[list[str], list[str], list[str]]] = {}
        self._events: list[dict[str, Any]] = []
        self._new_hashes: list[tuple[str, str]] = []
        # request id -> door, action, when sent, the person a delete names
        self._pending: dict[str, tuple[str, str, float, str | None]] = {}
        self._last_flush = 0.0
        self._unknown_doors: set[str] = set()
        self.errors: list[str] = []  # error replies and refused publishes, readable
        self.redundant: list[str] = []  # resent deletes of a person already gone
        self.sent = 0
        self.on_confirm: Callable[[str, str, float], None] | None = None
        self.on_sent: Callable[[int], None] | None = None  # after each request handed out
        self.forced: set[str] = set()  # doors to send a full sync to at the next chance
        self._load_doors()

    # -- registry ------------------------------------------------------------------------------

    def _load_doors(self) -> None:
        for row in self.registry.doors():
            live = self.doors.get(row.device_id)
            if live is None:
                live = self.doors[row.device_id] = DoorLive(
                    row.device_id,
                    confirmed_hash=row.confirmed_hash,
                    confirmed_time=row.confirmed_time,
                    flagged=row.flagged,
                    flagged_time=row.flagged_time,
                    last_event=row.last_event,
                )
                live.known = self.registry.known_hashes(row.device_id)

    def reload(self, force: bool = False) -> bool:
        """Recompute expectations when the registry changed; True when it did."""
        revision = self.registry.revision()
        if revision == self._revision and not force:
            return False
        self._revision = revision
        self._load_doors()
        expectations = self.registry.expectations()
        # A door that holds the previous expectation holds a set the fleet knows: the next
        # change can go to it as a few small requests rather than a full sync.
        for device_id, old in self.expected.items():
            live = self.doors.get(device_id)
            if live is not None and live.hash == old.hash:
                live.believed[old.hash] = old.persons
                while len(live.believed) > 4:
                    del live.believed[next(iter(live.believed))]
        self.expected = {
            device_id: Expected(model, persons, self._set_hash(model, persons))
            for device_id, (model, persons) in expectations.items()
        }
        for gone in set(self.doors) - set(self.expected):
            del self.doors[gone]
        log.info("registry revision %d: %d doors", revision, len(self.expected))
        return True

    def _set_hash(self, model_id: str, persons: Mapping[str, ExpectedPerson]) -> str:
        # Many doors expect the same set: hash each distinct set once.
        key = (model_id, frozenset((pid, person_digest(p)) for pid, p in persons.items()))
        got = self._set_hashes.get(key)
        if got is None:
            if len(self._set_hashes) > 4096:
                self._set_hashes.clear()
            got = self._set_hashes[key] = self._hashes.hash(persons, model_id)
        return got

    # -- reports from doors --------------------------------------------------------------------

    def drain(self) -> int:
        n = 0
        while True:
            try:
                report = self.link.reports.get_nowait()
            except Exception:
                return n
            n += 1
            try:
                self._take(report)
            except Exception:
                log.exception(
                    "report from %s (%s) could not be handled", report.device_id, report.kind
                )

    def _take(self, r: Report) -> None:
        live = self.doors.get(r.device_id)
        if live is None:
            if r.device_id not in self._unknown_doors and r.kind in ("availability", "state"):
                self._unknown_doors.add(r.device_id)
                log.warning("door %s is on the broker but not in the registry", r.device_id)
            return
        # When the report reached the fleet, not when this loop got to it: a confirmation's
        # time is the door's, not the fleet's backlog.
        now = min(r.received, self.clock())
        if r.kind == "availability":
            online = r.payload == b"online"
            if online and not live.online:
                log.info("door %s online", r.device_id)
                live.outstanding.clear()  # whatever was sent before may be lost
            elif not online and live.online:
                log.info("door %s offline", r.device_id)
            live.online, live.last_seen, live.dirty = online, now, True
        elif r.kind == "state":
            if not r.payload:
                return
            try:
                state = DoorState.model_validate_json(r.payload)
            except ValidationError as err:
                log.warning("door %s: unreadable state: %s", r.device_id, err.errors()[0]["msg"])
                return
            live.version, live.hash, live.count = state.version, state.hash, state.count
            live.state_time, live.last_seen, live.dirty = now, now, True
            self._check(live, now)
        elif r.kind in ("event", "audit"):
            self._event(live, r, now)
        elif r.kind == "reply":
            self._reply(live, r)

    def _event(self, live: DoorLive, r: Report, now: float) -> None:
        try:
            body = json.loads(r.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        # Delivery is at least once: events carry an id; audit records get one from content.
        eid = body.get("event_id") if r.kind == "event" else None
        if not isinstance(eid, str):
            eid = hashlib.sha256(r.device_id.encode() + b"\0" + r.payload).hexdigest()[:32]
        t = body.get("time")
        self._events.append(
            {
                "event_id": f"{r.kind}:{eid}",
                "device_id": live.device_id,
                "time": t if isinstance(t, (int, float)) else now,
                "kind": r.kind,
                "person": body.get("person") if r.kind == "event" else None,
                "decision": body.get("decision") if r.kind == "event" else body.get("action"),
                "body": body,
            }
        )
        live.last_event, live.last_seen, live.dirty = now, now, True

    def _reply(self, live: DoorLive, r: Report) -> None:
        try:
            body = json.loads(r.payload)
        except ValueError:
            return
        rid = body.get("id") if isinstance(body, dict) else None
        if isinstance(rid, str):
            live.outstanding.pop(rid, None)
        sent = self._pending.pop(rid, None) if isinstance(rid, str) else None
        if sent is None:
            return  # another server's request, or a duplicate
        if body.get("status") != "ok":
            msg = f"{live.device_id} {sent[1]}: {body.get('error')}"
            if sent[1] == "delete" and body.get("reason") == "no_person":
                # A resent delete (after a reconnect, or an answer that came late) finding the
                # person already gone: the change it asked for holds, so it is no error.
                log.info("door %s already lacks %s (a resent delete)", live.device_id, sent[3])
                self.redundant.append(msg)
                return
            log.warning("door refused a request: %s", msg)
            self.errors.append(msg)

    # -- comparing and sending -----------------------------------------------------------------

    def _patience(self, live: DoorLive) -> float:
        # Doubles with each unanswered attempt: a slow or overloaded door is not buried under
        # copies of a large sync it is still working through.
        return min(self.timing.resend_s * 2 ** max(live.attempts - 1, 0), self.timing.max_resend_s)

    def _may_act(self, live: DoorLive, now: float) -> bool:
        """A request to this door is unanswered, still valid, and was sent on the fleet's
        current connection (one sent before a reconnect may be lost)."""
        limit = self.timing.request_validity_s + self.timing.resend_s  # + the doors' clock skew
        return any(
            now - t < limit and conn == self.link.connects for t, conn in live.outstanding.values()
        )

    def _check(self, live: DoorLive, now: float) -> None:
        exp = self.expected.get(live.device_id)
        if exp is None or live.hash is None:
            return
        if live.hash == exp.hash:
            live.attempts, live.syncing = 0, False
            live.outstanding.clear()
            if live.confirmed_hash != exp.hash:
                live.confirmed_hash, live.confirmed_time, live.dirty = exp.hash, now, True
                if live.flagged:
                    log.info("door %s: back in line with the registry", live.device_id)
                if self.on_confirm is not None:
                    self.on_confirm(live.device_id, exp.hash, now)
            return
        if live.confirmed_hash is not None:
            live.confirmed_hash, live.dirty = None, True  # it no longer holds what it should
        quiet = now - live.last_sent >= self._patience(live)
        if quiet and self._never_asked(live):
            self._flag(live, now)

    def _never_asked(self, live: DoorLive) -> bool:
        """The door reports a set the fleet never asked it to hold. Checked against the
        registry too before saying so: other fleet processes (`revoke`, `sync`) record the
        sets they sent there."""
        if not live.known or live.hash in live.known:
            return False
        live.known |= self.registry.known_hashes(live.device_id)
        return live.hash not in live.known

    def _flag(self, live: DoorLive, now: float) -> None:
        why = (
            f"reported template hash {live.hash[:16]}… (version {live.version}), which the "
            "fleet never asked it to hold: tampered with or changed locally"
        )
        again = (live.confirmed_time or 0) > (live.flagged_time or 0)  # repaired since
        if live.flagged != why or again:
            log.error("door %s FLAGGED: %s; re-syncing it", live.device_id, why)
            live.flagged, live.flagged_time, live.dirty = why, now, True
        live.believed.clear()
        live.sent_for = None  # repaired at once, not after the resend delay
        self.forced.add(live.device_id)

    def reconcile(self) -> int:
        """Send requests to every online door that differs and has nothing in flight."""
        now = self.clock()
        n = 0
        syncing = sum(
            1 for d in self.doors.values() if d.syncing and now - d.last_sent < self._patience(d)
        )
        for device_id, exp in self.expected.items():
            live = self.doors.get(device_id)
            if live is None or not live.online or live.hash is None:
                continue
            if live.hash == exp.hash and device_id not in self.forced:
                continue
            # A new expectation goes out at once; the same one again after _patience(), and
            # only once nothing sent for it can still act.
            if live.sent_for == exp.hash and (
                now - live.last_sent < self._patience(live) or self._may_act(live, now)
            ):
                continue
            if not self.link.connected.is_set():
                return n
            if self._never_asked(live):
                self._flag(live, now)
            ops, predicted = self._plan(live, exp)
            if ops[0][0] == "sync":
                if syncing >= self.timing.max_syncs_in_flight:
                    continue  # the window is full: this door's turn comes next round
                syncing += 1
            self._send(live, exp, ops, predicted, now)
            n += 1
        return n

    def _plan(
        self, live: DoorLive, exp: Expected
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
        """The requests that take this door from what it reports to `exp`, and every hash it
        may report on the way."""
        base = live.believed.get(live.hash) if live.hash is not None else None
        forced = live.device_id in self.forced
        ops: list[tuple[str, dict[str, Any]]] = []
        predicted: list[str] = [exp.hash]
        if not live.known and live.hash is not None:
            # First contact: what the door holds before the fleet's first request is its
            # starting point, not a tamper (it may report it again while the sync is queued).
            predicted.append(live.hash)
        if base is not None and not forced:
            removed, changed, steps = self._diff(live.hash, base, exp)
            if 0 < len(removed) + len(changed) <= self.timing.max_incremental:
                ops = [("delete", {"person_id": pid}) for pid in removed]
                ops += [("enroll", enroll_payload(exp.persons[pid])) for pid in changed]
                predicted += steps
        if not ops:
            ops = [("sync", sync_payload(exp.persons))]
        return ops, predicted

    def _diff(
        self, base_hash: str | None, base: dict[str, ExpectedPerson], exp: Expected
    ) -> tuple[list[str], list[str], list[str]]:
        """(removed, changed, hashes of each single step): the same for every door that goes
        from the same set to the same set, so it is worked out once per pair."""
        key = (base_hash, exp.hash)
        got = self._diffs.get(key)
        if got is not None:
            return got
        removed = [pid for pid in base if pid not in exp.persons]
        changed = [
            pid
            for pid, p in exp.persons.items()
            if pid not in base or person_digest(base[pid]) != person_digest(p)
        ]
        steps: list[str] = []
        if len(removed) + len(changed) <= self.timing.max_incremental:
            # A door may apply these in any order across its two lanes, or refuse one: each
            # single step from the base is a state it may report meanwhile.
            for pid in removed:
                step = {k: v for k, v in base.items() if k != pid}
                steps.append(self._set_hash(exp.model_id, step))
            for pid in changed:
                step = dict(base)
                step[pid] = exp.persons[pid]
                steps.append(self._set_hash(exp.model_id, step))
        if len(self._diffs) > 4096:
            self._diffs.clear()
        got = self._diffs[key] = (removed, changed, steps)
        return got

    def _send(
        self,
        live: DoorLive,
        exp: Expected,
        ops: list[tuple[str, dict[str, Any]]],
        predicted: list[str],
        now: float,
    ) -> None:
        self.forced.discard(live.device_id)
        for h in predicted:
            if h not in live.known:
                live.known.add(h)
                self._new_hashes.append((live.device_id, h))
        # Keep the sets it may still hold: a resend after a lost request starts from them.
        live.believed[exp.hash] = exp.persons
        while len(live.believed) > 4:
            del live.believed[next(iter(live.believed))]
        live.attempts = live.attempts + 1 if live.sent_for == exp.hash else 1
        live.last_sent, live.sent_for = now, exp.hash
        live.syncing = ops[0][0] == "sync"
        for action, payload in ops:
            rid = self._publish(live.device_id, action, payload)
            live.outstanding[rid] = (now, self.link.connects)

    def _publish(self, device_id: str, action: str, payload: dict[str, Any]) -> str:
        topic = f"{self.link.prefix}/{device_id}/request/{action}"
        rid = uuid.uuid4().hex
        env = sign_request(
            self.key, device_id, topic, payload, self.timing.request_validity_s, request_id=rid
        )
        data = json.dumps(env, ensure_ascii=False, separators=(",", ":")).encode()
        if not self.link.publish(topic, data):
            log.warning("request to %s not handed to the broker; resent later", device_id)
        if len(self._pending) > MAX_PENDING_REPLIES:
            self._pending.clear()
        self._pending[rid] = (device_id, action, self.clock(), payload.get("person_id"))
        self.sent += 1
        if self.on_sent is not None:
            self.on_sent(self.sent)
        return rid

    def force_sync(self, doors: Iterable[str]) -> None:
        for d in doors:
            if d in self.doors:
                self.forced.add(d)
                self.doors[d].sent_for = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_flush < self.timing.flush_every_s:
            return
        self._last_flush = now
        states = [d.row() for d in self.doors.values() if d.dirty]
        for d in self.doors.values():
            d.dirty = False
        self.registry.record(states, self._events, self._new_hashes)
        self._events, self._new_hashes = [], []

    def step(self) -> None:
        t0 = time.monotonic()
        self.reload()
        t1 = time.monotonic()
        reports = self.drain()
        t2 = time.monotonic()
        now = self.clock()
        for live in self.doors.values():
            self._check(live, now)
        sent = self.reconcile()
        t3 = time.monotonic()
        self.flush()
        t4 = time.monotonic()
        if t4 - t0 > SLOW_STEP_S:
            log.warning(
                "slow loop: %.2f s (reload %.2f, %d reports %.2f, %d doors sent to %.2f, "
                "registry %.2f)",
                t4 - t0, t1 - t0, reports, t2 - t1, sent, t3 - t2, t4 - t3,
            )  # fmt: skip

    def unconfirmed(self, doors: Iterable[str] | None = None) -> list[str]:
        ids = self.expected if doors is None else doors
        return sorted(
            d
            for d in ids
            if d in self.expected
            and (self.doors.get(d) is None or self.doors[d].hash != self.expected[d].hash)
        )

    def wait_confirmed(
        self, doors: Iterable[str] | None, timeout_s: float, stop: Callable[[], bool] = bool
    ) -> list[str]:
        """Run the loop until these doors (all when None) confirm; returns those that did not."""
        wanted = list(self.expected if doors is None else doors)
        deadline = time.monotonic() + timeout_s
        while True:
            self.step()
            left = self.unconfirmed(wanted)
            if not left or time.monotonic() >= deadline or stop():
                self.flush(force=True)
                return left
            time.sleep(self.timing.reconcile_every_s / 4)

    def run(self, stop: Callable[[], bool], on_tick: Callable[[], None] | None = None) -> None:
        while not stop():
            pause = self.timing.reconcile_every_s
            try:
                self.step()
            except Exception:
                # The service outlives one bad pass (an unreadable row, a full disk): the next
                # pass tries again, a little later so the journal is not flooded.
                log.exception("fleet loop: this pass failed; trying again")
                pause = max(pause, 5.0)
            if on_tick is not None:
                on_tick()
            time.sleep(pause)
        self.flush(force=True)
