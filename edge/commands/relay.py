"""relay-safe and relay-pulse: force the lock relay locked; pulse it once by hand."""

from __future__ import annotations

import argparse
import time

from edge.commands.common import CommandError, config_from
from edge.config import Config
from edge.relay import MAX_PULSE_S, Relay, RelayError, check_pulse_s, make_relay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relay-safe",
        help="force the lock relay locked and exit (the unit's ExecStartPre=/ExecStopPost=)",
    )
    p.set_defaults(run=run_safe)

    p = sub.add_parser("relay-pulse", help="pulse the lock relay once and confirm it relocks")
    p.add_argument(
        "--seconds",
        type=_seconds,
        default=None,
        help=f"pulse length (default: relay.pulse_s; at most {MAX_PULSE_S:g})",
    )
    p.set_defaults(run=run_pulse)


def _seconds(text: str) -> float:
    try:
        return check_pulse_s(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _open(cfg: Config, door_contact: bool) -> Relay:
    try:
        return make_relay(cfg.relay, cfg.resolve(cfg.daemon.state_dir), door_contact=door_contact)
    except RelayError as err:
        # Exit 1: under systemd the unit's start (or stop) fails with this line in the journal.
        raise CommandError(f"relay: {err}", exit_code=1) from None


def run_safe(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    relay = _open(cfg, door_contact=False)  # requesting it drives the locked level already
    try:
        try:
            relay.lock()
            # An edge means the line had been left unlocked (say its owner was killed).
            # gpiod cannot see the level before its request, so it reports just "locked".
            relocked = bool(relay.edges)
        finally:
            relay.close()
    except RelayError as err:
        raise CommandError(f"relay: {err}", exit_code=1) from None
    note = "was unlocked, now locked" if relocked else "locked"
    print(f"relay-safe: {relay.describe()}: {note}")
    return 0


def run_pulse(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    relay = _open(cfg, door_contact=True)
    try:
        with relay:
            seconds = args.seconds if args.seconds is not None else relay.pulse_s
            relay.pulse(seconds)
            print(f"{relay.describe()}: unlocked for {seconds:g} s")
            # The relay's own timer relocks; this only watches it do so, with some slack.
            deadline = time.monotonic() + seconds + 2.0
            while relay.unlocked and time.monotonic() < deadline:
                time.sleep(0.02)
            if relay.unlocked:
                raise CommandError(
                    f"relay: {relay.describe()}: still unlocked {seconds + 2:g} s after the "
                    "pulse began; locking on exit",
                    exit_code=1,
                )
            edges = relay.edges
            if len(edges) >= 2 and edges[-2].unlocked and not edges[-1].unlocked:
                took = edges[-1].t_mono - edges[-2].t_mono
                print(f"{relay.describe()}: relocked after {took:.3f} s")
            else:
                print(f"{relay.describe()}: relocked")
            door = relay.door_open()
            if door is not None:
                print(f"door contact: {'open' if door else 'shut'}")
    except RelayError as err:
        raise CommandError(f"relay: {err}", exit_code=1) from None
    return 0
