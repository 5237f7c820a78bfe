"""Masked adaptation (c) and (d), measured on real masks:

    python bench/adaptation.py --train ../shared/data/lfw-subset --eval ../shared/data/mfr2-dev

(c) an embedding-unmasking head: a ridge map from a synthetically masked face's embedding to
the same face's unmasked embedding, fitted on the training photos plus the evaluation set's
unmasked photos of the *other* identities (cross-fitted by identity in 5 folds), applied to
probes the classifier calls masked; plain and shrunk towards the identity map.
(d) flipped-image embedding averaging.
(a), the synthetic masked templates that ship, is `python -m edge evaluate` with and without
`--no-variants`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from edge.config import load_config
from edge.evaluate import Sample, equal_error_rate, load_dataset, make_pairs, tar_at_far
from edge.imageio import read_image
from edge.pipeline import Pipeline
from edge.vision.maskrender import MaskDB, render_mask
from edge.vision.quality import FaceRejected

KINDS = ("surgical", "n95", "kn95", "cloth")


def synthetic_pairs(pipe: Pipeline, samples: list[Sample], seed: int):
    """(masked embedding, unmasked embedding, identity) for every unmasked photo × mask kind."""
    db, xs, ys, ids = MaskDB.load(), [], [], []
    for i, s in enumerate(samples):
        if s.masked:
            continue
        img = read_image(s.path)
        try:
            r = pipe.process(img)
        except FaceRejected:
            continue
        if r.face.mesh is None:
            continue
        for k in KINDS:
            try:
                m = render_mask(img, r.face.mesh.points, r.face.yaw,
                                np.random.default_rng(seed + i), mirrored=r.face.mesh.mirrored,
                                db=db, kind=k)  # fmt: skip
                xs.append(pipe.process(m).embedding)
            except (FaceRejected, ValueError):
                continue
            ys.append(r.embedding)
            ids.append(s.identity)
    return np.array(xs), np.array(ys), np.array(ids)


def ridge(x: np.ndarray, y: np.ndarray, lam: float, towards_identity: bool) -> np.ndarray:
    d = x.shape[1]
    if towards_identity:  # W = I + Δ with Δ penalised: λ → ∞ gives back the identity map
        return np.eye(d) + np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ (y - x))
    return np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="unmasked photos (person folders)")
    ap.add_argument("--eval", required=True, help="dataset with real masks (manifest.csv)")
    args = ap.parse_args()
    with Pipeline(load_config()) as pipe:
        xt, yt, _ = synthetic_pairs(pipe, load_dataset(args.train), 0)
        samples = load_dataset(args.eval)
        xe, ye, ide = synthetic_pairs(pipe, samples, 1000)
        emb, flip, masked = {}, {}, {}
        for i, s in enumerate(samples):
            try:
                r = pipe.process(read_image(s.path))
            except FaceRejected:
                continue
            f = pipe.embedder.embed([np.ascontiguousarray(r.aligned[:, ::-1])])[0]
            emb[i], masked[i] = r.embedding, r.masked
            flip[i] = (r.embedding + f) / np.linalg.norm(r.embedding + f)
    a, b, g = make_pairs(samples, "masked-vs-unmasked")
    ids = sorted({s.identity for s in samples})
    np.random.default_rng(0).shuffle(ids)
    folds = [set(ids[k::5]) for k in range(5)]

    def report(e: dict[int, np.ndarray]) -> list[float]:
        sc = np.array([float(e[i] @ e[j]) if i in e and j in e else -np.inf
                       for i, j in zip(a, b, strict=True)])  # fmt: skip
        gen, imp = sc[g], sc[~g]
        return [round(tar_at_far(gen, imp, 1e-2)["tar"], 4),
                round(tar_at_far(gen, imp, 1e-3)["tar"], 4),
                round(equal_error_rate(gen, imp)[0], 4)]  # fmt: skip

    def unmasked_by_head(lam: float, towards_identity: bool) -> dict[int, np.ndarray]:
        out = {}
        for fold in folds:
            keep = np.array([i not in fold for i in ide])
            w = ridge(np.vstack([xt, xe[keep]]), np.vstack([yt, ye[keep]]), lam, towards_identity)
            for i, s in enumerate(samples):
                if s.identity in fold and i in emb:
                    e = emb[i] @ w if masked[i] else emb[i]
                    out[i] = e / np.linalg.norm(e)
        return out

    results = {"baseline": report(emb), "(d) flip averaging": report(flip)}
    for lam in (0.1, 1.0, 10.0):
        results[f"(c) ridge head λ={lam}"] = report(unmasked_by_head(lam, False))
    for lam in (1.0, 10.0, 100.0, 1000.0):
        results[f"(c) ridge head towards identity λ={lam}"] = report(unmasked_by_head(lam, True))
    print(json.dumps({"columns": ["TAR@1e-2", "TAR@1e-3", "EER"],
                      "synthetic_pairs": len(xt) + len(xe), **results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
