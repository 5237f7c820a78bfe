"""run, enroll, delete, list: the door service and its local template management."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edge.commands.common import CommandError, config_from, open_pipeline
from edge.imageio import ImageError, read_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the door service (camera, decisions, relay, MQTT)")
    p.add_argument("--exit-at-end", action="store_true", help="stop when a file/folder source ends")
    p.set_defaults(run=run_door)

    p = sub.add_parser(
        "demo",
        help="the whole door on real photos: local broker, signed enrollment, a clip, mock relay",
    )
    p.set_defaults(run=run_demo)

    p = sub.add_parser("enroll", help="enroll a person from photos into the local store")
    p.add_argument("person_id", help="id: 1-64 letters, digits, '.', '_' or '-'")
    p.add_argument("images", type=Path, nargs="+", help="photos, each showing only this person")
    p.add_argument("--name", default=None, help="display name")
    p.add_argument("--replace", action="store_true", help="drop the person's earlier templates")
    p.set_defaults(run=run_enroll)

    p = sub.add_parser("delete", help="delete a person and all their templates")
    p.add_argument("person_id")
    p.set_defaults(run=run_delete)

    p = sub.add_parser("list", help="list enrolled people")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_list)


def _store(args: argparse.Namespace):
    from edge.store import Store, StoreError

    cfg = config_from(args)
    try:
        return cfg, Store.open(cfg)
    except StoreError as err:
        raise CommandError(str(err)) from None


def run_door(args: argparse.Namespace) -> int:
    from edge.capture import CaptureError
    from edge.daemon import Door, DoorError
    from edge.manifest import ManifestError
    from edge.mqtt.nonces import LedgerError
    from edge.mqtt.outbox import OutboxError
    from edge.relay import RelayError
    from edge.store import StoreError
    from edge.systemd import setup_logging

    cfg = config_from(args)
    setup_logging(logging.DEBUG if args.verbose > 1 else logging.INFO)
    if cfg.security.insecure_local_dev:
        logging.getLogger("edge").error(
            "SECURITY: insecure_local_dev is ON: unsigned enroll/delete/sync/unlock commands are "
            "obeyed. Never run a real door like this."
        )
    try:
        door = Door(cfg, exit_at_end=args.exit_at_end)
        door.install_signal_handlers()
        return door.run()
    except (
        DoorError,
        StoreError,
        ManifestError,
        RelayError,
        CaptureError,
        LedgerError,
        OutboxError,
    ) as err:
        # A start that cannot work says why in one line; systemd's log shows it.
        logging.getLogger("edge.daemon").error("cannot run the door: %s", err)
        raise CommandError(str(err), exit_code=1) from None


def run_demo(args: argparse.Namespace) -> int:
    from edge.demo import DemoError, run_demo
    from edge.mqtt.localbroker import BrokerError

    cfg = config_from(args)
    try:
        return run_demo(cfg)
    except (DemoError, BrokerError) as err:
        raise CommandError(str(err), exit_code=1) from None


def run_enroll(args: argparse.Namespace) -> int:
    from edge.enroll import Enroller, EnrollmentError, variants_from_config
    from edge.store import StoreError

    cfg = config_from(args)
    try:
        # The photos first: a bad one must not leave a new store (and key) behind.
        images = [read_image(p, cfg.limits) for p in args.images]
    except ImageError as err:
        raise CommandError(str(err)) from None
    cfg, store = _store(args)
    try:
        with open_pipeline(cfg) as pipe:
            enroller = Enroller(
                pipe, store, variants_from_config(cfg.enroll), keep_crops=cfg.store.keep_crops
            )
            state = enroller.enroll_photos(args.person_id, args.name, images, args.replace)
        info = store.get(args.person_id)
    except (EnrollmentError, StoreError) as err:
        raise CommandError(str(err)) from None
    finally:
        store.close()
    print(f"enrolled {args.person_id}: {info.templates} template(s); store v{state.version}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from edge.store import StoreError

    _, store = _store(args)
    try:
        state = store.delete(args.person_id)
    except StoreError as err:
        raise CommandError(str(err)) from None
    finally:
        store.close()
    print(f"deleted {args.person_id}; store v{state.version}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    _, store = _store(args)
    try:
        people, state = store.list(), store.state()
    finally:
        store.close()
    if args.json:
        rows = [
            {"person_id": p.person_id, "name": p.name, "templates": p.templates} for p in people
        ]
        print(json.dumps({"persons": rows, "version": state.version, "hash": state.hash}, indent=2))
    else:
        for p in people:
            print(f"{p.person_id:<24} {p.name or '':<24} {p.templates} template(s)")
        print(f"{state.persons} people, store v{state.version}, hash {state.hash[:16]}…")
    return 0
