"""maskify, mask-sheet: synthetic masks on real photos, for evaluation and for review."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.commands.common import CommandError, Progress, config_from, open_pipeline
from edge.evaluate import IMAGE_SUFFIXES, MANIFEST, MANIFEST_FIELDS, Sample, load_dataset
from edge.imageio import ImageError, read_image
from edge.pipeline import Pipeline
from edge.vision.maskrender import (
    KINDS,
    MaskDB,
    NoMeshError,
    default_db,
    face_mesh,
    mask_face,
    render_mask,
)

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
TILE = 200  # contact-sheet face tile, pixels
LABEL_H = 18


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "maskify",
        help="write masked copies of a dataset (synthetic medical masks) for evaluation",
        description="Draws a synthetic mask, chosen to suit each face's turn, on every unmasked "
        "photo of a folder of person folders and writes the copies under --dst with the same "
        "folders and a manifest.csv (masked=1, mask_type=<mask id>). Photos whose face mesh is "
        "not found are skipped and listed; photos already labelled masked are left out.",
    )
    p.add_argument("--src", type=Path, required=True, help="dataset folder (person folders)")
    p.add_argument("--dst", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (mask choice and fit)")
    p.add_argument("--kinds", type=_kinds, default=None, help=f"mask types: {','.join(KINDS)}")
    p.add_argument(
        "--keep-originals",
        action="store_true",
        help="also copy the unmasked photos (masked=0), so the output alone serves the "
        "masked-vs-unmasked protocol; masked copies are then named <name>_masked.<ext>",
    )
    p.set_defaults(run=run_maskify)

    p = sub.add_parser(
        "mask-sheet",
        help="write a contact sheet of synthetic masks on real photos (PNG) for review",
        description="Original | masked pairs of up to --n photos, labelled with the mask id "
        "and the face's yaw.",
    )
    p.add_argument("--src", type=Path, nargs="+", required=True, help="folders and/or images")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=24, help="how many photos (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--kinds", type=_kinds, default=None, help=f"mask types: {','.join(KINDS)}")
    p.add_argument("--cols", type=int, default=4, help="pairs per row (default 4)")
    p.set_defaults(run=run_sheet)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown mask type {bad[0] if bad else text!r}; choose from {','.join(KINDS)}"
        )
    return kinds


# --------------------------------------------------------------------------------------------
# maskify
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    sample: Sample
    rel: Path  # path under dst
    mask_type: str
    masked: bool


def run_maskify(args: argparse.Namespace) -> int:
    src, dst = args.src.resolve(), args.dst.resolve()
    if dst == src or src in dst.parents:
        raise CommandError(f"--dst must lie outside --src ({args.dst})")
    try:
        samples = load_dataset(src)
    except ValueError as err:
        raise CommandError(str(err)) from None
    todo = [s for s in samples if not s.masked]
    if len(todo) < len(samples):
        print(
            f"left out {len(samples) - len(todo)} photos already labelled masked", file=sys.stderr
        )
    rng = np.random.default_rng(args.seed)
    db = default_db()
    rows: list[Written] = []
    skipped: list[tuple[Path, str]] = []
    with open_pipeline(config_from(args)) as pipe:
        progress = Progress(len(todo), "masking")
        for i, s in enumerate(todo):
            rel = s.path.relative_to(src)
            try:
                rows.extend(_maskify_one(pipe, s, rel, dst, rng, db, args))
            except (ImageError, NoMeshError) as err:
                skipped.append((s.path, str(err)))
                log.info("%s: %s", s.path, err)
            progress.update(i + 1)
    if not any(r.masked for r in rows):
        raise CommandError(f"{args.src}: no photo could be masked ({len(skipped)} skipped)")
    _write_manifest(dst / MANIFEST, rows)
    masked = sum(r.masked for r in rows)
    print(f"masked {masked} of {len(todo)} photos into {args.dst} ({dst / MANIFEST})")
    for path, why in skipped:
        print(f"  skipped {path}: {why}")
    return 0


def _maskify_one(
    pipe: Pipeline,
    s: Sample,
    rel: Path,
    dst: Path,
    rng: np.random.Generator,
    db: MaskDB,
    args: argparse.Namespace,
) -> list[Written]:
    image = read_image(s.path, pipe.cfg.limits)
    masked, mask_id = mask_face(pipe, image, rng, kind=args.kinds, db=db)
    out: list[Written] = []
    if args.keep_originals:
        _write_image(dst / rel, image)
        out.append(Written(s, rel, "no-mask", False))
        rel = rel.with_name(f"{rel.stem}_masked{rel.suffix}")
    _write_image(dst / rel, masked)
    out.append(Written(s, rel, mask_id, True))
    return out


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = (
        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    )
    if not cv2.imwrite(str(path), image, params):
        raise CommandError(f"cannot write {path}")


def _write_manifest(path: Path, rows: list[Written]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_FIELDS)
        for r in rows:
            w.writerow([r.sample.identity, r.rel.as_posix(), int(r.masked), r.mask_type])


# --------------------------------------------------------------------------------------------
# mask-sheet
# --------------------------------------------------------------------------------------------


def run_sheet(args: argparse.Namespace) -> int:
    if args.n < 1 or args.cols < 1:
        raise CommandError("--n and --cols must be at least 1")
    paths = _pick(_images(args.src), args.n, args.seed)
    rng = np.random.default_rng(args.seed)
    tiles: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    with open_pipeline(config_from(args)) as pipe:
        for path in paths:
            try:
                tiles.append(
                    sheet_pair(pipe, read_image(path, pipe.cfg.limits), rng, args.kinds, path.stem)
                )
            except (ImageError, NoMeshError) as err:
                skipped.append((path, str(err)))
    if not tiles:
        raise CommandError("no face could be masked in the given photos")
    sheet = contact_sheet(tiles, args.cols)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), sheet):
        raise CommandError(f"cannot write {args.out}")
    print(f"contact sheet of {len(tiles)} photos written to {args.out}")
    for path, why in skipped:
        print(f"  skipped {path}: {why}")
    return 0


def _images(sources: list[Path]) -> list[list[Path]]:
    """The images of each source (a folder, searched recursively, or one image)."""
    groups: list[list[Path]] = []
    for src in sources:
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file():
            found = [src]
        else:
            raise CommandError(f"not found: {src}")
        if found:
            groups.append(found)
    if not groups:
        raise CommandError("no images in " + ", ".join(str(s) for s in sources))
    return groups


def _pick(groups: list[list[Path]], n: int, seed: int) -> list[Path]:
    """Up to n photos taken in turn from each source (each shuffled), the same for a seed."""
    rng = np.random.default_rng(seed)
    queues = [[g[i] for i in rng.permutation(len(g))] for g in groups]
    picked: list[Path] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def sheet_pair(
    pipe: Pipeline,
    image: np.ndarray,
    rng: np.random.Generator,
    kinds: tuple[str, ...] | None,
    name: str,
) -> np.ndarray:
    """Original | masked crops of the face with a label: mask id, yaw, file name."""
    face = face_mesh(pipe, image)
    entry = default_db().choose(face.yaw, rng, kinds)
    masked = render_mask(image, face.points, face.yaw, rng, entry.id, face.mirrored)
    pair = np.hstack([_face_crop(image, face.box), _face_crop(masked, face.box)])
    label = np.full((LABEL_H * 2, pair.shape[1], 3), 255, np.uint8)
    _text(label, f"{entry.id}  yaw {face.yaw:+.0f}", 13)
    _text(label, name[:40], 13 + LABEL_H, (90, 90, 90))
    return np.vstack([pair, label])


def _face_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A square around the face box (1.6× its size), padded where it leaves the photo."""
    x, y, w, h = box
    side = int(1.6 * max(w, h))
    cx, cy = x + w // 2, y + h // 2
    x0, y0 = cx - side // 2, cy - side // 2
    pad = side
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    interp = cv2.INTER_AREA if side > TILE else cv2.INTER_CUBIC
    return cv2.resize(crop, (TILE, TILE), interpolation=interp)


def _text(img: np.ndarray, text: str, y: int, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
    cv2.putText(img, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)


def contact_sheet(tiles: list[np.ndarray], cols: int, gap: int = 6) -> np.ndarray:
    """Tiles of equal size in rows of `cols`, on white."""
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    cols = min(cols, len(tiles))
    sheet = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        sheet[y : y + th, x : x + tw] = t
    return sheet
