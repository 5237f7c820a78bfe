"""The door-lock relay: pulse timing, relock on every exit path, door contact, relay-safe.

The mock line stands in for a GPIO pin (none here); it records edges with their times, so pulse
lengths are read from the edges, not from how long a test happened to take. The gpiod backend is
exercised for what can be checked without a chip: its errors.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from edge.commands import relay as relay_cmd
from edge.commands.common import CommandError
from edge.config import DoorContactConfig, RelayConfig, load_config
from edge.relay import GpiodRelay, MockRelay, Relay, RelayError, make_relay
from edge.relay.debounce import Debouncer
from edge.relay.gpiod import chip_path
from edge.relay.mock import read_state

REPO_ROOT = Path(__file__).resolve().parent.parent
# Scheduling slack allowed on top of a pulse's length (a loaded CI machine, a Pi).
SLACK_S = 0.25


def mock(**kw: object) -> MockRelay:
    relay = make_relay(RelayConfig(type="mock", **kw))  # type: ignore[arg-type]
    assert isinstance(relay, MockRelay)
    return relay


def wait_locked(relay: Relay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while relay.unlocked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not relay.unlocked, f"still unlocked after {timeout} s"


def pulse_lengths(relay: Relay) -> list[float]:
    """Lengths of the unlocked spells in the recorded edges (unlock edge to relock edge)."""
    e = relay.edges
    return [b.t_mono - a.t_mono for a, b in itertools.pairwise(e) if a.unlocked and not b.unlocked]


def timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "relay-timer"]


@pytest.fixture(autouse=True)
def no_timer_outlives_its_relay() -> Iterator[None]:
    yield
    assert timer_threads() == [], "a relay was left open (its timer thread still runs)"


# -- pulses --------------------------------------------------------------------------------


def test_pulse_lasts_what_config_says() -> None:
    with mock(pulse_s=0.3) as relay:
        assert relay.edges == () and not relay.unlocked  # requested locked: no edge at start
        assert relay.pulse() is True
        assert relay.unlocked and relay.line.value
        wait_locked(relay, 0.3 + 2)
        levels = [e.level for e in relay.edges]
        assert levels == [1, 0]
        (length,) = pulse_lengths(relay)
        assert 0.3 <= length <= 0.3 + SLACK_S
        assert relay.edges[0].t_wall <= relay.edges[1].t_wall


def test_pulse_seconds_overrides_config() -> None:
    with mock(pulse_s=5.0) as relay:
        relay.pulse(0.15)
        wait_locked(relay, 2)
        (length,) = pulse_lengths(relay)
        assert 0.15 <= length <= 0.15 + SLACK_S


def test_repeated_pulses_extend_and_never_shorten() -> None:
    with mock(pulse_s=0.4) as relay:
        assert relay.pulse() is True
        time.sleep(0.2)
        assert relay.pulse() is False  # already open: extended, no new edge
        assert [e.level for e in relay.edges] == [1]
        wait_locked(relay, 3)
        (length,) = pulse_lengths(relay)
        assert 0.2 + 0.4 <= length <= 0.2 + 0.4 + SLACK_S

        # A shorter pulse during a longer one keeps the longer end.
        relay.pulse(0.5)
        relay.pulse(0.05)
        wait_locked(relay, 3)
        assert 0.5 <= pulse_lengths(relay)[-1] <= 0.5 + SLACK_S


def test_invalid_pulse_lengths_are_refused_without_touching_the_line() -> None:
    with mock() as relay:
        for bad in (0, -1, float("nan"), float("inf"), 301):
            with pytest.raises(ValueError, match="pulse length"):
                relay.pulse(bad)
        assert relay.edges == ()


def test_lock_ends_a_pulse_at_once() -> None:
    with mock() as relay:
        relay.pulse(30)
        relay.lock()
        assert not relay.unlocked and not relay.line.value
        assert [e.level for e in relay.edges] == [1, 0]
        assert pulse_lengths(relay)[0] < 0.5
        # A pulse after lock() gets its own full length (the old deadline is gone).
        relay.pulse(0.1)
        wait_locked(relay, 2)
        assert 0.1 <= pulse_lengths(relay)[-1] <= 0.1 + SLACK_S


def test_close_during_a_pulse_relocks_immediately_and_is_idempotent() -> None:
    relay = mock()
    relay.pulse(30)
    t0 = time.monotonic()
    relay.close()
    assert time.monotonic() - t0 < 1.0  # did not wait for the pulse or the timer
    assert relay.closed and not relay.unlocked and not relay.line.value
    assert [e.level for e in relay.edges] == [1, 0]
    relay.close()  # idempotent
    relay.lock()  # a no-op once closed
    assert [e.level for e in relay.edges] == [1, 0]
    with pytest.raises(RelayError, match="closed"):
        relay.pulse()
    assert timer_threads() == []


def test_an_exception_inside_with_leaves_the_door_locked() -> None:
    with pytest.raises(KeyError), mock() as relay:
        relay.pulse(30)
        raise KeyError("the daemon crashed mid-pulse")
    assert not relay.line.value and relay.closed
    assert [e.level for e in relay.edges] == [1, 0]


def test_a_failing_line_during_a_pulse_ends_locked(tmp_path: Path) -> None:
    # The mock line's storage disappears: recording the unlock edge fails inside pulse().
    folder = tmp_path / "gone"
    relay = mock(mock_log=folder / "relay.jsonl")
    shutil.rmtree(folder)
    with pytest.raises(RelayError, match="cannot record edge"):
        relay.pulse(30)
    assert not relay.line.value  # pulse relocked on its way out
    wait_locked(relay, 2)  # and the relay's state agrees once the relock is confirmed
    relay.close()
    assert [e.level for e in relay.edges] == [1, 0]


# -- levels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("active_low", [False, True])
def test_active_low_inverts_the_pin_not_the_meaning(active_low: bool) -> None:
    locked_pin, unlocked_pin = (1, 0) if active_low else (0, 1)
    with mock(active_low=active_low, pulse_s=0.1) as relay:
        assert relay.line.physical == locked_pin and relay.line.value is False
        relay.pulse()
        assert relay.line.physical == unlocked_pin and relay.line.value is True
        wait_locked(relay, 2)
        assert [(e.level, e.physical) for e in relay.edges] == [(1, unlocked_pin), (0, locked_pin)]
    assert relay.line.physical == locked_pin


def test_mock_log_records_each_edge_and_the_state(tmp_path: Path) -> None:
    log_path = tmp_path / "relay.jsonl"
    with mock(mock_log=log_path, active_low=True, pulse_s=0.1) as relay:
        relay.pulse()
        assert read_state(log_path)["level"] == 1
        wait_locked(relay, 2)
    lines = [json.loads(s) for s in log_path.read_text().splitlines()]
    assert [(r["level"], r["physical"]) for r in lines] == [(1, 0), (0, 1)]
    assert [r["t_mono"] for r in lines] == [e.t_mono for e in relay.edges]
    assert read_state(log_path) == lines[-1]


def test_a_requested_line_is_busy_for_a_second_owner(tmp_path: Path) -> None:
    log_path = tmp_path / "relay.jsonl"
    with mock(mock_log=log_path), pytest.raises(RelayError, match="busy"):
        mock(mock_log=log_path)
    mock(mock_log=log_path).close()  # released on close


def test_relative_mock_log_resolves_against_state_dir(tmp_path: Path) -> None:
    cfg = RelayConfig(type="mock", mock_log=Path("relay.jsonl"), pulse_s=0.1)
    with make_relay(cfg, tmp_path / "state") as relay:
        relay.pulse()
    assert read_state(tmp_path / "state" / "relay.jsonl")["level"] == 0


# -- door contact ----------------------------------------------------------------------------


def test_debouncer_commits_a_level_only_after_it_held() -> None:
    d = Debouncer(False, 0.05, t=0.0)
    for t, level in [(1.0, True), (1.01, False), (1.02, True), (1.03, False)]:
        d.feed(level, t)
    assert d.value(2.0) is False  # every blip was shorter than 50 ms
    d.feed(True, 3.0)
    assert d.value(3.04) is False
    assert d.value(3.06) is True
    d.feed(False, 4.0)
    d.feed(True, 4.04)  # bounced back before 50 ms
    assert d.value(5.0) is True


def test_door_contact_debounce_ignores_bounces() -> None:
    dc = DoorContactConfig(line=27, active_low=True, debounce_ms=200)
    with mock(door_contact=dc) as relay:
        contact = relay.contact
        assert contact is not None
        assert relay.door_open() is False  # contact closed (low, active) = door shut
        # Edges carry their own times, like kernel events: let some time pass, then replay
        # a history into it at exact offsets.
        time.sleep(0.7)
        now = time.monotonic()
        for i, level in enumerate([1, 0, 1, 0]):  # bounces of 50 ms each, ending shut
            contact.set_level(level, at=now - 0.6 + 0.05 * i)
        assert relay.door_open() is False
        contact.set_level(1, at=now - 0.4)  # opened 0.4 s ago and stayed open
        assert relay.door_open() is True
        # It shuts now: not believed until the level has held for the debounce period.
        contact.set_level(0)
        assert relay.door_open() is True
        time.sleep(0.25)
        assert relay.door_open() is False


def test_door_contact_polarity_and_absence() -> None:
    dc = DoorContactConfig(line=27, active_low=False, debounce_ms=0)
    with mock(door_contact=dc) as relay:
        assert relay.contact is not None
        assert relay.door_open() is False
        relay.contact.set_level(0)  # active-high contact: low = contact open = door open
        assert relay.door_open() is True
    with mock() as relay:
        assert relay.door_open() is None
    # relay-safe builds the relay without its contact.
    with make_relay(RelayConfig(type="mock", door_contact=dc), door_contact=False) as relay:
        assert relay.door_open() is None


# -- gpiod (no GPIO chip here: its errors) ---------------------------------------------------


def test_gpiod_missing_chip_is_a_clear_relay_error(tmp_path: Path) -> None:
    chip = tmp_path / "gpiochip9"
    with pytest.raises(RelayError) as err:
        make_relay(RelayConfig(type="gpiod", chip=str(chip), line=17))
    message = str(err.value)
    assert str(chip) in message and "line 17" in message
    assert "No such file" in message and "gpiochip" in message


def test_gpiod_non_chip_device_is_a_clear_relay_error() -> None:
    with pytest.raises(RelayError, match=r"/dev/null line 5.*not a GPIO chip"):
        make_relay(RelayConfig(type="gpiod", chip="/dev/null", line=5))


def test_gpiod_not_installed_is_a_relay_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # what `import gpiod` sees without it
    with pytest.raises(RelayError, match=r"gpiochip0 line 17.*gpiod package"):
        GpiodRelay(RelayConfig(type="gpiod"))


def test_importing_edge_relay_does_not_import_gpiod() -> None:
    code = "import sys, edge.relay; sys.exit('gpiod' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


def test_chip_names_become_dev_paths() -> None:
    assert chip_path("gpiochip4") == "/dev/gpiochip4"
    assert chip_path("/dev/gpiochip0") == "/dev/gpiochip0"


# -- commands --------------------------------------------------------------------------------


def _wired() -> bool:
    from edge.commands import COMMANDS

    return relay_cmd in COMMANDS


def run_in_process(*argv: str) -> tuple[int, str, str]:
    """A relay sub-command parsed and run as `python -m edge` would, in this process."""
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config")
    relay_cmd.register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = args.run(args)
        except CommandError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = e.exit_code
    return rc, out.getvalue(), err.getvalue()


def run_subprocess(*argv: str) -> tuple[int, str, str]:
    if not _wired():
        pytest.skip("edge/commands/__init__.py does not list edge.commands.relay yet")
    proc = subprocess.run(
        [sys.executable, "-m", "edge", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


RUNNERS = {"in-process": run_in_process, "python -m edge": run_subprocess}


def write_config(tmp_path: Path, relay: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    state = str(tmp_path / "state")
    path.write_text(yaml.safe_dump({"relay": relay, "daemon": {"state_dir": state}}))
    return path


# The daemon's stand-in: pulse for 30 s, say so, then wait to be killed.
CHILD = """
import sys, time
from edge.config import load_config
from edge.relay import make_relay
cfg = load_config(sys.argv[1])
relay = make_relay(cfg.relay, cfg.resolve(cfg.daemon.state_dir))
relay.pulse(30)
print("UNLOCKED", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_relay_safe_locks_a_line_left_open_by_a_killed_daemon(tmp_path: Path, runner: str) -> None:
    config = write_config(tmp_path, {"type": "mock", "mock_log": "relay.jsonl"})
    run = RUNNERS[runner]
    log_path = load_config(config).state_path(Path("relay.jsonl"))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "UNLOCKED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    state = read_state(log_path)
    assert state is not None and state["level"] == 1 and state["pid"] == child.pid

    rc, out, err = run("-c", str(config), "relay-safe")
    assert rc == 0, err
    assert "was unlocked, now locked" in out
    state = read_state(log_path)
    assert state is not None and state["level"] == 0 and state["pid"] != child.pid
    levels = [json.loads(s)["level"] for s in log_path.read_text().splitlines()]
    assert levels == [1, 0]

    rc, out, _ = run("-c", str(config), "relay-safe")  # already locked: nothing to change
    assert rc == 0 and out.strip().endswith(": locked")
    assert len(log_path.read_text().splitlines()) == 2


@pytest.mark.parametrize("runner", RUNNERS)
def test_relay_safe_without_a_chip_exits_1_naming_it(tmp_path: Path, runner: str) -> None:
    chip = tmp_path / "gpiochip3"
    config = write_config(tmp_path, {"type": "gpiod", "chip": str(chip), "line": 23})
    rc, out, err = RUNNERS[runner]("-c", str(config), "relay-safe")
    assert rc == 1 and out == ""
    assert f"error: relay: gpiod {chip} line 23" in err and "No such file" in err


def test_relay_safe_reports_a_busy_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"type": "mock", "mock_log": "relay.jsonl"})
    cfg = load_config(config)
    with make_relay(cfg.relay, cfg.resolve(cfg.daemon.state_dir)):
        rc, _, err = run_in_process("-c", str(config), "relay-safe")
    assert rc == 1 and "busy" in err


@pytest.mark.parametrize("ending", ["sys.exit(3)", "raise SystemError('boom')"])
def test_a_normal_exit_without_close_relocks_through_atexit(tmp_path: Path, ending: str) -> None:
    log_path = tmp_path / "relay.jsonl"
    code = (
        "import sys\nfrom pathlib import Path\nfrom edge.config import RelayConfig\n"
        "from edge.relay import make_relay\n"
        f"r = make_relay(RelayConfig(type='mock', mock_log=Path({str(log_path)!r})))\n"
        f"r.pulse(30)\n{ending}\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True)
    assert proc.returncode != 0
    levels = [json.loads(s)["level"] for s in log_path.read_text().splitlines()]
    assert levels == [1, 0]
    assert read_state(log_path)["level"] == 0


def test_relay_pulse_command_confirms_the_relock(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"type": "mock", "mock_log": "relay.jsonl"})
    rc, out, err = run_in_process("-c", str(config), "relay-pulse", "--seconds", "0.2")
    assert rc == 0, err
    assert "unlocked for 0.2 s" in out and "relocked after 0.2" in out
    for bad in ("0", "500", "soon"):
        with pytest.raises(SystemExit), redirect_stderr(io.StringIO()):
            run_in_process("-c", str(config), "relay-pulse", "--seconds", bad)
