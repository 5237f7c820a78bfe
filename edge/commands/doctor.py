"""validate-config and doctor: is this device ready to run the door?"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Callable

from edge.commands.common import config_from
from edge.config import Config
from edge.manifest import ManifestError, load_manifest, verify


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-config", help="check the config file and exit (0 = valid)")
    p.add_argument(
        "--show", action="store_true", help="print the validated config, secrets redacted"
    )
    p.set_defaults(run=run_validate)

    p = sub.add_parser("doctor", help="check models, runtimes, mesh backend, camera and broker")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_doctor)


def run_validate(args: argparse.Namespace) -> int:
    cfg = config_from(args)  # raises CommandError naming each bad key
    if args.show:
        print(json.dumps(cfg.redacted(), indent=2))
    else:
        print(f"{args.config or 'config.yaml'}: valid")
    return 0


def _models(cfg: Config) -> str:
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    wanted = [cfg.models.landmarker, cfg.models.embedder, cfg.models.mask_classifier]
    if cfg.models.detector:
        wanted.append(cfg.models.detector)
    for mid in wanted:
        verify(manifest, manifest.get(mid))
    return f"{len(wanted)} models present, sha256 as in the manifest ({', '.join(wanted)})"


def _providers(cfg: Config) -> str:
    import onnxruntime as ort

    from edge.vision.onnx_session import pick_providers

    chosen = [p if isinstance(p, str) else p[0] for p in pick_providers(cfg.runtime)]
    available = ", ".join(ort.get_available_providers())
    return f"onnxruntime {ort.__version__}: using {chosen[0]} (available: {available})"


def _mesh(cfg: Config) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = {"litert": "ai-edge-litert", "tasks": "mediapipe"}[cfg.landmarks.type]
    try:
        return f"landmarks.type {cfg.landmarks.type}: {package} {version(package)}"
    except PackageNotFoundError:
        raise RuntimeError(
            f"landmarks.type {cfg.landmarks.type} needs {package}, which is not installed "
            "(run ./install.sh)"
        ) from None


def _pipeline(cfg: Config) -> str:
    import numpy as np

    from edge.pipeline import Pipeline

    t0 = time.perf_counter()
    with Pipeline(cfg) as pipe:
        pipe.embedder.embed([np.zeros((112, 112, 3), np.uint8)])
    return f"models load and run ({time.perf_counter() - t0:.1f} s to load and warm up)"


def _camera(cfg: Config) -> str:
    from edge.capture import make_source

    if cfg.camera is None:
        return "skipped: no camera configured"
    source = make_source(cfg.camera, cfg.resolve)
    source.open()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = source.read()
            if frame is not None:
                h, w = frame.image.shape[:2]
                return f"{source.describe()}: first frame {w}×{h}"
        raise RuntimeError(f"{source.describe()}: opened but gave no frame within 10 s")
    finally:
        source.close()


def _broker(cfg: Config) -> str:
    if cfg.mqtt is None:
        return "skipped: no broker configured"
    m = cfg.mqtt
    with socket.create_connection((m.host, m.port), timeout=m.connect_timeout_s):
        pass
    return f"{m.host}:{m.port} accepts connections"


CHECKS: tuple[tuple[str, Callable[[Config], str]], ...] = (
    ("models", _models),
    ("runtime", _providers),
    ("mesh", _mesh),
    ("pipeline", _pipeline),
    ("camera", _camera),
    ("broker", _broker),
)


def run_doctor(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    results = []
    for name, check in CHECKS:
        try:
            results.append({"check": name, "ok": True, "detail": check(cfg)})
        except (ManifestError, OSError, RuntimeError, ValueError) as err:
            results.append({"check": name, "ok": False, "detail": str(err)})
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "checks": results}, indent=2))
    else:
        print("config: valid")
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:<9} {r['detail']}")
    return 0 if ok else 1
