"""Masked adaptation (b): a student distilled so that its embedding of a synthetically masked
face matches the teacher's (SFace's) embedding of the same face unmasked.

    python bench/distill_student.py --train ../shared/data/lfw-subset --eval ../shared/data/mfr2-dev

The student is the kit's light iresnet ("edge") with a 128-d head, trained from scratch on CPU:
it sees each training photo unmasked and under every mask kind, and learns to land where SFace
puts the unmasked face. It is evaluated on real masks (mfr2-dev masked probes vs unmasked
enrolment), alone and fused with SFace (mean of the two cosines), against SFace alone. No mfr2
photo is used for training, so every evaluated identity is unseen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from edge.config import load_config
from edge.evaluate import equal_error_rate, load_dataset, make_pairs, tar_at_far
from edge.imageio import read_image
from edge.pipeline import Pipeline
from edge.vision.maskrender import MaskDB, render_mask
from edge.vision.quality import FaceRejected
from models.kit.backbones import get_model

KINDS = ("surgical", "n95", "kn95", "cloth")


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """BGR uint8 (N,112,112,3) → RGB float (N,3,112,112) in [-1, 1]."""
    x = torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def training_set(pipe: Pipeline, data: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops (unmasked and masked) and the teacher's unmasked embedding for each."""
    db, crops, targets = MaskDB.load(), [], []
    for i, s in enumerate(load_dataset(data)):
        img = read_image(s.path)
        try:
            r = pipe.process(img)
        except FaceRejected:
            continue
        if r.masked or r.face.mesh is None:
            continue
        crops.append(r.aligned)
        targets.append(r.embedding)
        for k in KINDS:
            try:
                m = render_mask(img, r.face.mesh.points, r.face.yaw,
                                np.random.default_rng(seed + i), mirrored=r.face.mesh.mirrored,
                                db=db, kind=k)  # fmt: skip
                crops.append(pipe.process(m).aligned)
                targets.append(r.embedding)
            except (FaceRejected, ValueError):
                continue
    return np.stack(crops), np.stack(targets).astype(np.float32)


def train(crops: np.ndarray, targets: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = get_model("edge", embedding_size=targets.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    x_all, y_all = to_tensor(crops), torch.from_numpy(targets)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    model.train()
    for step in range(1, steps + 1):
        idx = rng.choice(len(x_all), size=min(64, len(x_all)), replace=False)
        x = x_all[idx]
        if rng.random() < 0.5:
            x = torch.flip(x, dims=[3])  # a flipped face keeps its identity
        loss = (1 - F.cosine_similarity(model(x), y_all[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            print(
                f"step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return model.eval()


def evaluate(pipe: Pipeline, model: torch.nn.Module, data: str) -> dict[str, list[float]]:
    samples = load_dataset(data)
    teacher, student = {}, {}
    for i, s in enumerate(samples):
        try:
            r = pipe.process(read_image(s.path))
        except FaceRejected:
            continue
        teacher[i] = r.embedding
        with torch.no_grad():
            e = model(to_tensor(r.aligned[None]))[0].numpy()
        student[i] = e / np.linalg.norm(e)
    a, b, g = make_pairs(samples, "masked-vs-unmasked")

    def report(score) -> list[float]:
        sc = np.array([score(i, j) if i in teacher and j in teacher else -np.inf
                       for i, j in zip(a, b, strict=True)])  # fmt: skip
        gen, imp = sc[g], sc[~g]
        return [round(tar_at_far(gen, imp, 1e-2)["tar"], 4),
                round(tar_at_far(gen, imp, 1e-3)["tar"], 4),
                round(equal_error_rate(gen, imp)[0], 4)]  # fmt: skip

    return {
        "teacher (SFace)": report(lambda i, j: float(teacher[i] @ teacher[j])),
        "student": report(lambda i, j: float(student[i] @ student[j])),
        "fused (mean cosine)": report(
            lambda i, j: 0.5 * float(teacher[i] @ teacher[j] + student[i] @ student[j])
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="append", required=True, help="unmasked training photos")
    ap.add_argument("--eval", required=True, help="dataset with real masks (manifest.csv)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with Pipeline(load_config()) as pipe:
        parts = [training_set(pipe, d, args.seed + 1000 * k) for k, d in enumerate(args.train)]
        crops = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        print(f"{len(crops)} training crops", file=sys.stderr)
        model = train(crops, targets, args.steps, args.seed)
        out = evaluate(pipe, model, args.eval)
    print(json.dumps({"columns": ["TAR@1e-2", "TAR@1e-3", "EER"], **out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
