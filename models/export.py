"""Export trained models: `python -m models.export {onnx,int8,tensorrt,bench,evaluate} --help`.

The commands live in models/kit/export_cli.py; this file is the entry point.
"""

from __future__ import annotations

import os

# Native libraries read these when they load (as in `python -m edge`): MediaPipe's and
# OpenCV's INFO chatter would bury the progress bar.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

from models.kit.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
