"""pad: presentation-attack detection (ISO/IEC 30107-3 APCER / BPCER) on labelled clips."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.commands.common import CommandError, Progress, config_from, open_pipeline, print_json
from edge.pad import ClipError, format_report, load_clips, measure


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pad",
        help="APCER per attack kind, BPCER and time to unlock on a folder of labelled clips",
        description="Plays every clip under CLIPS through the door's own decision path "
        "(pipeline, observation, track, liveness, k-of-n) on the clip's clock, after enrolling "
        "CLIPS/enroll/<person>/ photos as the door does. A clip is a folder of frames with a "
        'clip.json: {"kind": "live" | attack kind, "person": ID, "masked": BOOL, "fps": N}. '
        "Reports, per ISO/IEC 30107-3, the APCER of each attack kind (clips that opened the "
        "door), the BPCER (live clips that did not open it for their person) and the time "
        "from the first face to the unlock. `python -m bench.pad_clips` makes such a folder.",
    )
    p.add_argument("--clips", type=Path, required=True, help="folder of clip folders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    try:
        _, clips = load_clips(args.clips)  # check the folder before loading any model
    except ClipError as err:
        raise CommandError(str(err)) from None
    progress = Progress(len(clips), "clips")

    def show(done: int, total: int, result) -> None:
        progress.update(done)

    with open_pipeline(cfg, video=True) as pipe:
        try:
            report = measure(pipe, cfg, args.clips, progress=show)
        except ClipError as err:
            raise CommandError(str(err)) from None
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    if report["apcer_max"]:
        print("an attack clip opened the door", file=sys.stderr)
    return 0
