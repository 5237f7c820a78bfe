"""compare, embed, identify: the pipeline on photos."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.commands.common import CommandError, config_from, open_pipeline, print_json, process_file
from edge.evaluate import load_dataset
from edge.imageio import ImageError, read_image
from edge.match import Gallery, cosine, threshold_for
from edge.pipeline import FaceResult
from edge.vision.quality import FaceRejected


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare the faces in two photos")
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_compare)

    p = sub.add_parser("embed", help="print the embedding of each photo's face")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_embed)

    p = sub.add_parser("identify", help="find who a photo shows in a folder of person folders")
    p.add_argument("image", type=Path)
    p.add_argument("--gallery", type=Path, required=True, help="folder of person folders of photos")
    p.add_argument("--top", type=int, default=3, help="how many candidates to list")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_identify)


def _image_info(path: Path, r: FaceResult) -> dict[str, Any]:
    return {
        "path": str(path),
        "masked": r.masked,
        "mask_prob": round(r.mask_prob, 4),
        "face": r.face_dict(),
        "alignment": r.face.source,
        "quality": r.quality.as_dict(),
    }


def run_compare(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    with open_pipeline(cfg) as pipe:
        r1 = process_file(pipe, args.image1)
        r2 = process_file(pipe, args.image2)
    sim = cosine(r1.embedding, r2.embedding)
    # A mask on either face hides half of it: the pair is judged by the masked threshold.
    masked = r1.masked or r2.masked
    thr = threshold_for(cfg.match, masked)
    out = {
        "similarity": round(sim, 4),
        "threshold": thr,
        "threshold_kind": "masked" if masked else "unmasked",
        "match": sim >= thr,
        "model": pipe.model_id,
        "images": [_image_info(args.image1, r1), _image_info(args.image2, r2)],
    }
    if args.json:
        print_json(out)
    else:
        for im in out["images"]:
            state = "masked" if im["masked"] else "unmasked"
            print(
                f"{im['path']}: {state} (mask probability {im['mask_prob']:.2f}), face {im['face']}"
            )
        verdict = "MATCH" if out["match"] else "NO MATCH"
        print(f"similarity {sim:.4f}, {out['threshold_kind']} threshold {thr:.4f}: {verdict}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    rows = []
    with open_pipeline(cfg) as pipe:
        for path in args.images:
            r = process_file(pipe, path)
            rows.append(
                {
                    **_image_info(path, r),
                    "model": pipe.model_id,
                    "embedding": [round(float(v), 6) for v in r.embedding],
                }
            )
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            head = ", ".join(f"{v:+.3f}" for v in row["embedding"][:6])
            print(f"{row['path']}: {len(row['embedding'])}-d [{head}, …] masked={row['masked']}")
    return 0


def run_identify(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    try:
        samples = load_dataset(args.gallery)
    except ValueError as err:
        raise CommandError(str(err)) from None
    skipped = []
    with open_pipeline(cfg) as pipe:
        probe = process_file(pipe, args.image)
        gallery = Gallery(pipe.embedder.dim)
        for s in samples:
            try:
                gallery.add(
                    s.identity, pipe.process(read_image(s.path, pipe.cfg.limits)).embedding[None]
                )
            except (ImageError, FaceRejected) as err:
                skipped.append({"path": str(s.path), "error": str(err)})
    if not len(gallery):
        raise CommandError(f"{args.gallery}: no usable face in any gallery photo")
    thr = threshold_for(cfg.match, probe.masked)
    per = sorted(gallery.best_per_label(probe.embedding).items(), key=lambda kv: -kv[1])
    best_label, best = per[0]
    out = {
        "identity": best_label if best >= thr else None,
        "score": round(best, 4),
        "threshold": thr,
        "masked": probe.masked,
        "mask_prob": round(probe.mask_prob, 4),
        "candidates": [{"identity": k, "score": round(v, 4)} for k, v in per[: args.top]],
        "gallery": {
            "people": len(set(gallery.labels)),
            "templates": len(gallery),
            "skipped": skipped,
        },
    }
    if args.json:
        print_json(out)
    else:
        who = out["identity"] or f"nobody enrolled (best: {best_label})"
        print(
            f"{args.image}: {who}, score {best:.4f} vs threshold {thr:.4f}"
            f" ({'masked' if probe.masked else 'unmasked'})"
        )
        for c in out["candidates"]:
            print(f"  {c['identity']:<30} {c['score']:.4f}")
        for s in skipped:
            print(f"  skipped {s['path']}: {s['error']}")
    return 0 if out["identity"] else 1
