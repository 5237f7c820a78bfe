"""Train a face embedder: `python -m models.train --config models/configs/tiny.yaml`.

The config (models/kit/config.py) names the person-folder dataset, the iresnet, the margin loss,
the schedule and where checkpoints go. Ctrl-C stops cleanly; `--resume` (or `resume: true`)
continues from checkpoint_dir/last.pt. The exporter takes the checkpoint from here:
`python -m models.export onnx --checkpoint CHECKPOINT_DIR/last.pt ...`.
"""

from __future__ import annotations

import os

# Native libraries read these when they load (as in `python -m edge`): MediaPipe's and
# OpenCV's INFO chatter would bury the progress bar.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import logging
import sys
from pathlib import Path

from models.kit.config import TrainConfigError, load_train_config


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", type=Path, required=True, help="training config (YAML)")
    ap.add_argument(
        "--resume", action="store_true", help="continue from checkpoint_dir/last.pt if present"
    )
    ap.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="override")
    ap.add_argument("--check", action="store_true", help="validate the config, print it, exit")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_train_config(args.config)
    except TrainConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overrides = {}
    if args.resume:
        overrides["resume"] = True
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.device is not None:
        overrides["device"] = args.device
    if overrides:
        try:
            cfg = type(cfg).model_validate({**cfg.model_dump(), **overrides})
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.check:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0

    from models.kit.train import train  # torch loads only when training

    try:
        result = train(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    losses = list(result.losses.values())
    summary = {
        "checkpoint": str(result.checkpoint),
        "steps": result.steps,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval": result.evals[max(result.evals)] if result.evals else None,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
