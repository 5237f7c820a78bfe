"""`python -m fleet` / `maskgate-fleet`: the registry's admin commands and the `watch` service."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.enroll import EnrollmentError
from edge.imageio import ImageError
from edge.mqtt.signing import public_key_b64
from fleet.config import FleetConfig, FleetConfigError, load_fleet_config
from fleet.keys import KeyError_, create_key, load_key
from fleet.link import Link
from fleet.reconcile import Fleet
from fleet.registry import Registry, RegistryError, StoredEmbedding

log = logging.getLogger(__name__)

EXIT_UNCONFIRMED = 3
WATCH_SESSION_S = 86400


def _registry(cfg: FleetConfig) -> Registry:
    return Registry(cfg.resolve(cfg.registry))


def _connected_fleet(cfg: FleetConfig, reg: Registry) -> tuple[Fleet, Link]:
    key = load_key(cfg.resolve(cfg.key_file))
    link = Link(cfg.broker)
    link.start()
    if not link.wait_connected(10):
        link.stop()
        raise RegistryError(f"cannot reach the broker at {cfg.broker.host}:{cfg.broker.port}")
    fleet = Fleet(reg, link, key, cfg.timing)
    fleet.reload(force=True)
    # Retained availability and state arrive right after subscribing.
    time.sleep(0.5)
    fleet.drain()
    return fleet, link


def _load_embeddings(path: Path) -> list[StoredEmbedding]:
    """A JSON list of {model_id, vector, masked}."""
    try:
        data = json.loads(path.read_text())
        return [
            StoredEmbedding(
                e["model_id"], bool(e.get("masked", False)), np.asarray(e["vector"], "<f4")
            )
            for e in data
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(
            f"{path}: not a JSON list of {{model_id, vector, masked}}: {err}"
        ) from None


def _photos(paths: Sequence[Path]) -> list[bytes]:
    out = []
    for p in paths:
        try:
            out.append(p.read_bytes())
        except OSError as err:
            raise RegistryError(f"{p}: cannot read photo: {err.strerror or err}") from None
    return out


def _embeddings(args: argparse.Namespace, cfg: FleetConfig, photos: list[bytes]):
    embs: list[StoredEmbedding] = []
    if args.embeddings is not None:
        embs += _load_embeddings(args.embeddings)
    if photos:
        from fleet.photos import embed_photos

        embs += embed_photos(photos, cfg.door_config)
    return embs


def _wait(
    cfg: FleetConfig,
    reg: Registry,
    timeout: float,
    doors: list[str] | None = None,
    force: bool = False,
    change: Callable[[], None] | None = None,
) -> int:
    """Connect, learn every door's state, make `change`, then wait for the doors to confirm."""
    fleet, link = _connected_fleet(cfg, reg)
    try:
        if change is not None:
            change()
            fleet.reload()
        if force:
            fleet.force_sync(doors if doors is not None else fleet.expected)
        left = fleet.wait_confirmed(doors, timeout)
    finally:
        link.stop()
    wanted = doors if doors is not None else list(fleet.expected)
    print(f"confirmed: {len(wanted) - len(left)} of {len(wanted)} doors")
    for d in left:
        live = fleet.doors.get(d)
        why = "offline" if live is None or not live.online else "not confirmed"
        have = live.hash[:12] if live is not None and live.hash else "-"
        print(
            f"  NOT CONFIRMED {d}: {why} (reports {have}, expected {fleet.expected[d].hash[:12]})"
        )
    return EXIT_UNCONFIRMED if left else 0


def cmd_init(args: argparse.Namespace, cfg: FleetConfig) -> int:
    pub, created = create_key(cfg.resolve(cfg.key_file))
    with _registry(cfg) as reg:
        reg.set_meta("public_key", pub)
    print(
        f"{'created' if created else 'kept the existing'} signing key {cfg.resolve(cfg.key_file)}"
    )
    print("add this to every door's config.yaml, security.trusted_keys:")
    print(pub)
    return 0


def cmd_person(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        if args.action == "list":
            for p in reg.persons():
                print(json.dumps(p))
            return 0
        if args.action == "remove":
            reg.remove_person(args.person)
            print(f"removed {args.person}")
        else:
            photos = _photos(args.photo or [])
            embs = _embeddings(args, cfg, photos)
            if args.action == "add":
                if not embs:
                    raise RegistryError("give --photo or --embeddings: a door needs embeddings")
                reg.add_person(args.person, args.name, args.group or [], embs, photos)
            else:
                reg.update_person(
                    args.person,
                    args.name,
                    args.group or [],
                    args.remove_group or [],
                    embs or None,
                    photos,
                )
            print(f"{args.action}: {args.person} ({len(embs)} embeddings)")
        if args.wait is not None:
            return _wait(cfg, reg, args.wait)
    return 0


def cmd_group(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        (reg.grant if args.action == "grant" else reg.revoke_group)(args.group, args.doors)
        print(f"{args.action}: group {args.group} at {', '.join(args.doors)}")
        if args.wait is not None:
            return _wait(cfg, reg, args.wait, list(args.doors))
    return 0


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_door(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        if args.action == "add":
            reg.add_door(args.device, args.model_id, args.group or [])
            print(f"added door {args.device} ({args.model_id})")
            return 0
        fleet = Fleet(reg, _NoLink(cfg), None, cfg.timing)  # type: ignore[arg-type]
        fleet.reload(force=True)
        rows = []
        for d in reg.doors():
            exp = fleet.expected[d.device_id]
            if d.state_hash is None:
                drift = "never seen"
            elif d.flagged and (d.confirmed_time or 0) <= (d.flagged_time or 0):
                drift = "FLAGGED: " + d.flagged
            elif d.state_hash == exp.hash:
                drift = "in sync"
            else:
                drift = "behind" if d.state_hash in reg.known_hashes(d.device_id) else "DRIFT"
            rows.append(
                {
                    "device_id": d.device_id,
                    "online": d.online,
                    "model_id": d.model_id,
                    "groups": list(d.groups),
                    "version": d.state_version,
                    "hash": d.state_hash,
                    "expected_hash": exp.hash,
                    "persons": d.state_count,
                    "expected_persons": len(exp.persons),
                    "drift": drift,
                    "last_seen": d.last_seen,
                    "last_event": d.last_event,
                }
            )
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(
            f"{'door':<16} {'online':<7} {'ver':>5} {'hash':<13} {'persons':>8}  "
            f"{'last event':<19}  drift"
        )
        for r in rows:
            print(
                f"{r['device_id']:<16} {'yes' if r['online'] else 'no':<7} "
                f"{r['version'] if r['version'] is not None else '-':>5} "
                f"{(r['hash'] or '-')[:12]:<13} {r['persons'] or 0:>4}/{r['expected_persons']:<3}  "
                f"{_fmt_time(r['last_event']):<19}  {r['drift']}"
            )
    return 0


class _NoLink:
    """`door list` reads the registry only."""

    def __init__(self, cfg: FleetConfig) -> None:
        import queue

        self.prefix = cfg.broker.prefix
        self.reports: queue.Queue[Any] = queue.Queue()
        self.connected = threading.Event()


def cmd_sync(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        known = {d.device_id for d in reg.doors()}
        unknown = sorted(set(args.door or ()) - known)
        if unknown:
            raise RegistryError(f"no door {', '.join(map(repr, unknown))} in the registry")
        return _wait(cfg, reg, args.timeout, args.door or None, force=True)


def cmd_revoke(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        if not reg.has_person(args.person):
            raise RegistryError(f"no person {args.person!r} in the registry")

        def change() -> None:
            # Every group in one write: one granted meanwhile by another admin goes too.
            groups = reg.revoke_person(args.person)
            print(f"revoked {args.person} (was in {', '.join(groups) or 'no group'})")

        return _wait(cfg, reg, args.timeout, change=change)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise RegistryError(f"--since {text!r}: Unix seconds or an ISO date/time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def cmd_events(args: argparse.Namespace, cfg: FleetConfig) -> int:
    with _registry(cfg) as reg:
        for e in reg.events(_since(args.since), args.door, args.person, args.limit):
            if args.json:
                print(json.dumps(e))
            else:
                print(
                    f"{_fmt_time(e['time'])}  {e['device_id']:<16} {e['kind']:<6} "
                    f"{e['decision'] or '-':<8} {e['person'] or '-'}"
                )
    return 0


def cmd_watch(args: argparse.Namespace, cfg: FleetConfig) -> int:
    from edge.systemd import notify

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _registry(cfg) as reg:
        key = load_key(cfg.resolve(cfg.key_file))
        log.info("fleet key %s", public_key_b64(key))
        # One watch per registry: a fixed client id and a persistent session (a day), so the
        # broker keeps the doors' events for it across its restarts.
        client_id = cfg.broker.client_id or "maskgate-fleet-watch"
        link = Link(cfg.broker, client_id=client_id, session_s=WATCH_SESSION_S)
        link.start()
        if not link.wait_connected(30):
            log.warning("broker not reachable yet; following doors once it is")
        fleet = Fleet(reg, link, key, cfg.timing)
        fleet.reload(force=True)
        notify("READY=1")
        try:
            fleet.run(stop.is_set, on_tick=lambda: notify("WATCHDOG=1"))
        finally:
            notify("STOPPING=1")
            link.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="maskgate-fleet", description=__doc__)
    ap.add_argument("-c", "--config", type=Path, help="fleet.yaml (default: built-in defaults)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("init", help="create the signing key and registry; print the public key")

    p = sub.add_parser("person", help="people: add, update, remove, list")
    p.add_argument("action", choices=["add", "update", "remove", "list"])
    p.add_argument("person", nargs="?", default=None)
    p.add_argument("--name")
    p.add_argument("--group", action="append", help="join this group (repeatable)")
    p.add_argument("--remove-group", action="append", help="leave this group (update)")
    p.add_argument("--photo", action="append", type=Path, help="photo file (repeatable)")
    p.add_argument("--embeddings", type=Path, help="JSON list of {model_id, vector, masked}")
    p.add_argument("--wait", type=float, metavar="S", help="then wait S s for doors to confirm")

    g = sub.add_parser("group", help="let a group through doors, or stop it")
    g.add_argument("action", choices=["grant", "revoke"])
    g.add_argument("group")
    g.add_argument("doors", nargs="+")
    g.add_argument("--wait", type=float, metavar="S")

    d = sub.add_parser("door", help="doors: add, list")
    d.add_argument("action", choices=["add", "list"])
    d.add_argument("device", nargs="?")
    d.add_argument("--model-id", help="the door's embedder model id (add)")
    d.add_argument("--group", action="append")
    d.add_argument("--json", action="store_true")

    s = sub.add_parser("sync", help="send doors their full set and wait for confirmation")
    s.add_argument("--door", action="append")
    s.add_argument("--timeout", type=float, default=30.0)

    r = sub.add_parser("revoke", help="take a person out of every group; wait for every door")
    r.add_argument("person")
    r.add_argument("--timeout", type=float, default=30.0)

    e = sub.add_parser("events", help="stored door events and audit records")
    e.add_argument("--since")
    e.add_argument("--door")
    e.add_argument("--person")
    e.add_argument("--limit", type=int, default=1000)
    e.add_argument("--json", action="store_true")

    sub.add_parser("watch", help="the long-running fleet service")

    sim = sub.add_parser("simulate", help="many simulated doors against a mosquitto of its own")
    sim.add_argument("--doors", type=int, default=50)
    sim.add_argument("--people", type=int, default=100)
    sim.add_argument(
        "--processes", type=int, default=0, help="door processes (0: one per 63 doors, at least 2)"
    )
    sim.add_argument("--offline", type=float, default=0.1, help="share of doors taken offline")
    sim.add_argument("--workdir", type=Path, help="default: a temporary folder on tmpfs")
    sim.add_argument("--json", action="store_true")
    return ap


COMMANDS = {
    "init": cmd_init,
    "person": cmd_person,
    "group": cmd_group,
    "door": cmd_door,
    "sync": cmd_sync,
    "revoke": cmd_revoke,
    "events": cmd_events,
    "watch": cmd_watch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "simulate":
            from fleet.simulate import main as simulate

            return simulate(args)
        cfg = load_fleet_config(args.config)
        if args.command == "person" and args.action != "list" and not args.person:
            raise RegistryError(f"person {args.action} needs a person id")
        if args.command == "door" and args.action == "add" and not (args.device and args.model_id):
            raise RegistryError("door add needs a device id and --model-id")
        return COMMANDS[args.command](args, cfg)
    except (FleetConfigError, RegistryError, KeyError_, EnrollmentError, ImageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
