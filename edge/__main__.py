"""Command line: `python -m edge COMMAND …` (also installed as `maskgate`).

One sub-command per module under edge/commands/; each registers its parser and a `run`.
"""

from __future__ import annotations

import os

# Native libraries read these when they load, so set them before anything imports cv2 or
# mediapipe: their INFO/WARNING chatter is noise on a door's journal.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import logging
import sys

from edge import __version__
from edge.commands import COMMANDS
from edge.commands.common import CommandError
from edge.nativelog import show_native_logs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="maskgate",
        description="MaskGate: face verification for a door, masked or not.",
    )
    ap.add_argument("--version", action="version", version=f"maskgate {__version__}")
    ap.add_argument(
        "-c", "--config", default=None, help="config file (default: the project's config.yaml)"
    )
    ap.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_native_logs(args.verbose > 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.run(args) or 0)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
