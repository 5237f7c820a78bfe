"""`fleet simulate`: N simulated doors (fleet.simdoors, spread over a few processes) and the
fleet's own loop against a mosquitto this command starts. It rolls out P people to every door
(restarting the broker mid-rollout), takes a share of the doors offline, revokes one person,
measures how fast each online door confirms, brings the offline doors back and measures how
fast they converge, then asks every door's own store whether it still holds the person.

Simulation-only knobs (documented in the README): door state lives on tmpfs by default
(500 doors share one disk here; a real door fsyncs its own), and doors skip Home Assistant
discovery. Everything else is the door's code as it runs on a door.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.mqtt.localbroker import HOST, LocalBroker
from edge.mqtt.signing import load_private_key
from fleet.config import BrokerConfig, TimingConfig
from fleet.keys import create_key
from fleet.link import Link
from fleet.reconcile import Fleet
from fleet.registry import Registry, StoredEmbedding

log = logging.getLogger(__name__)

MODEL_ID = "sim-128"
DIM = 128
GROUP = "staff"
CONVERGE_TIMEOUT_S = 120.0
# A simulated door holds ~12 file descriptors (its socket, paho's wake-up socket pair, three
# SQLite files with their -wal and -shm); paho waits on them with select(), limited to
# descriptors below 1024. So a process carries at most this many doors.
MAX_DOORS_PER_PROCESS = 63


# Idle doors still run their MQTT loops; one 100-person sync alone costs a door ~0.1 s of CPU,
# so under this many cores' worth of use no backlog of syncs is left.
IDLE_CORES = 0.3


class SimulationError(RuntimeError):
    pass


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), q)), 3)


class Workers:
    """The door processes; each speaks JSON lines on its stdin/stdout."""

    def __init__(self, groups: list[list[str]], spec: dict[str, Any], logdir: Path) -> None:
        self.groups = groups
        self.procs: list[subprocess.Popen[str]] = []
        self.owner: dict[str, int] = {}
        root = Path(__file__).resolve().parent.parent
        for i, ids in enumerate(groups):
            for d in ids:
                self.owner[d] = i
            err = (logdir / f"worker-{i}.log").open("w")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fleet.simdoors", json.dumps({**spec, "ids": ids})],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": str(root)},
                )
            )

    def read(self, i: int) -> dict[str, Any]:
        line = self.procs[i].stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"door worker {i} ended (exit {self.procs[i].poll()})")
        return json.loads(line)

    def ask(self, cmd: dict[str, Any], ids: list[str] | None = None) -> list[dict[str, Any]]:
        targets = range(len(self.procs))
        per: dict[int, list[str]] = {}
        if ids is not None:
            for d in ids:
                per.setdefault(self.owner[d], []).append(d)
            targets = sorted(per)
        for i in targets:
            body = {**cmd, "ids": per[i]} if ids is not None else cmd
            self.procs[i].stdin.write(json.dumps(body) + "\n")  # type: ignore[union-attr]
            self.procs[i].stdin.flush()  # type: ignore[union-attr]
        return [self.read(i) for i in targets]

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write('{"op": "quit"}\n')  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


class FleetThread:
    """The fleet's loop in a thread of this process, as `watch` runs it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.lock = threading.Lock()
        self.confirmed: dict[str, list[tuple[str, float]]] = {}
        fleet.on_confirm = self._confirmed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    def _confirmed(self, device_id: str, h: str, t: float) -> None:
        self.confirmed.setdefault(device_id, []).append((h, t))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                self.fleet.step()
            time.sleep(self.fleet.timing.reconcile_every_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def when_confirmed(self, device_id: str, h: str) -> float | None:
        for got, t in self.confirmed.get(device_id, ()):
            if got == h:
                return t
        return None

    def wait(self, doors: list[str], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                left = self.fleet.unconfirmed(doors)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def _wait_idle(workers: Workers, timeout_s: float = 60.0) -> float:
    """Wait until the door processes use under IDLE_CORES together; seconds waited."""
    t0 = time.monotonic()

    def cpu() -> float:
        return sum(r["cpu_s"] for r in workers.ask({"op": "cpu"}))

    before = cpu()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(1.0)
        now = cpu()
        if now - before < IDLE_CORES:
            break
        before = now
    return round(time.monotonic() - t0, 2)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n, people = args.doors, args.people
    procs = args.processes or max(2, -(-n // MAX_DOORS_PER_PROCESS))
    if -(-n // procs) > MAX_DOORS_PER_PROCESS:
        raise SimulationError(
            f"{n} doors over {procs} processes is more than {MAX_DOORS_PER_PROCESS} per "
            "process: paho's network loop uses select(), which cannot watch file descriptors "
            "above 1023, and each simulated door holds about 12"
        )
    rng = np.random.default_rng(7)
    broker = LocalBroker(workdir / "broker")
    broker.start()
    result: dict[str, Any] = {"doors": n, "people": people, "processes": procs, "errors": 0}
    phases: dict[str, float] = {}
    workers: Workers | None = None
    link: Link | None = None
    fleet_thread: FleetThread | None = None
    try:
        pub, _ = create_key(workdir / "fleet-key.pem")
        key = load_private_key(workdir / "fleet-key.pem")
        reg = Registry(workdir / "fleet.db")
        ids = [f"door{i:04d}" for i in range(n)]
        reg.add_doors([(d, MODEL_ID, [GROUP]) for d in ids])
        t0 = time.monotonic()
        spec = {
            "host": HOST,
            "port": broker.port,
            "prefix": "maskgate",
            "model_id": MODEL_ID,
            "dim": DIM,
            "trusted_key": pub,
            "root": str(workdir / "doors"),
        }
        workers = Workers([ids[i::procs] for i in range(procs)], spec, workdir)
        ready = sum(workers.read(i)["ready"] for i in range(procs))
        phases["doors_started_s"] = round(time.monotonic() - t0, 2)
        log.info("%d doors connected in %.1f s", ready, phases["doors_started_s"])

        link = Link(BrokerConfig(host=HOST, port=broker.port), client_id="sim-fleet")
        link.start()
        link.wait_connected(10)
        timing = TimingConfig()
        fleet = Fleet(reg, link, key, timing)
        fleet_thread = FleetThread(fleet)

        # 1. Roll out: every person to every door; the broker restarts part-way through.
        person_ids = [f"p{i:05d}" for i in range(people)]
        for pid in person_ids:
            v = rng.standard_normal(DIM).astype("<f4")
            reg.add_person(pid, f"Person {pid}", [GROUP], [StoredEmbedding(MODEL_ID, False, v)])
        restart_at = max(1, n // 3)

        def restart_midway(sent: int) -> None:
            # Runs on the fleet's thread: a third of the requests are out, the rest are not.
            if sent != restart_at:
                return
            result["broker_restarted_after_requests"] = sent
            result["broker_restarted_at_confirmed"] = n - len(fleet.unconfirmed())
            log.info("killing and restarting the broker mid-rollout (%d requests out)", sent)
            broker.restart(kill=True)

        fleet.on_sent = restart_midway
        t0 = time.monotonic()
        fleet_thread.start()
        left = fleet_thread.wait(ids, CONVERGE_TIMEOUT_S)
        phases["rollout_s"] = round(time.monotonic() - t0, 2)
        result["rollout_unconfirmed"] = len(left)
        fleet.on_sent = None

        # 2. A share of the doors goes offline.
        offline = ids[:: max(1, round(1 / args.offline))] if args.offline > 0 else []
        workers.ask({"op": "offline"}, offline)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with fleet_thread.lock:
                if not any(fleet.doors[d].online for d in offline):
                    break
            time.sleep(0.05)
        online = [d for d in ids if d not in set(offline)]

        # 3. Revoke one person on a site at rest (doors done with the roll-out's last
        # requests, as a real revocation would find them); time each online door.
        phases["settle_s"] = _wait_idle(workers)
        sent_at: list[float] = []
        fleet.on_sent = lambda _n: sent_at.append(time.time())
        victim = person_ids[people // 2]
        with fleet_thread.lock:
            t_revoke = time.time()
            reg.update_person(victim, remove_groups=[GROUP])
            fleet.reload()
            new_hash = {d: fleet.expected[d].hash for d in ids}
        left = fleet_thread.wait(online, CONVERGE_TIMEOUT_S)
        lat = [
            t - t_revoke
            for d in online
            if (t := fleet_thread.when_confirmed(d, new_hash[d])) is not None
        ]
        fleet.on_sent = None
        result["revocation"] = {
            "online_doors": len(online),
            "requests_out_s": round(max(sent_at) - t_revoke, 3) if sent_at else None,
            "confirmed": len(lat),
            "p50_s": _percentile(lat, 50),
            "p99_s": _percentile(lat, 99),
            "max_s": round(max(lat), 3) if lat else None,
        }

        # 4. The offline doors come back and must converge.
        started: dict[str, float] = {}
        for reply in workers.ask({"op": "online"}, offline):
            started.update(reply["started"])
        fleet_thread.wait(offline, CONVERGE_TIMEOUT_S)
        back = [
            t - started[d]
            for d in offline
            if (t := fleet_thread.when_confirmed(d, new_hash[d])) is not None
        ]
        result["offline_converged"] = {
            "offline_doors": len(offline),
            "converged": len(back),
            "p50_s": _percentile(back, 50),
            "max_s": round(max(back), 3) if back else None,
        }

        # 5. Ask every door's own store.
        holding: list[str] = []
        wrong: list[str] = []
        door_errors: list[str] = []
        for reply in workers.ask({"op": "inspect", "person": victim}):
            holding += reply["holding"]
            wrong += [d for d, h in reply["hashes"].items() if h != new_hash[d]]
            door_errors += reply["errors"]
        with fleet_thread.lock:
            unconfirmed = fleet.unconfirmed()
            fleet_errors = list(fleet.errors)
            redundant = len(fleet.redundant)
        result["unconfirmed"] = len(unconfirmed)
        result["holding_revoked"] = len(holding)
        result["stores_not_matching"] = len(wrong)
        result["errors"] = len(door_errors) + len(fleet_errors)
        result["error_samples"] = (door_errors + fleet_errors)[:10]
        result["redundant_deletes"] = redundant
        result["requests_sent"] = fleet.sent
        result["phases"] = phases
        return result
    finally:
        if fleet_thread is not None:
            fleet_thread.stop()
        if workers is not None:
            workers.close()
        if link is not None:
            link.stop()
        broker.stop()


def main(args: argparse.Namespace) -> int:
    if args.doors < 1 or args.people < 2:
        print("error: --doors ≥ 1 and --people ≥ 2", file=sys.stderr)
        return 1
    logging.getLogger().setLevel(logging.WARNING if args.json else logging.INFO)
    try:
        return _main(args)
    except SimulationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so the broker and door processes are always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="maskgate-sim-", dir=base) as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    ok = result["unconfirmed"] == 0 and result["holding_revoked"] == 0 and result["errors"] == 0
    return 0 if ok else 3
