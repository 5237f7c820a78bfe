"""Verification metrics for a face dataset: pairs, ROC, AUC, EER, TAR at fixed FAR.

Pure NumPy (cv2 is imported only to draw the ROC plot). The CLI runs the face pipeline on
every image and passes in one L2-normalised embedding per image (a NaN row when the face could
not be acquired) and the mask classifier's per-image decision; this module turns those into a
JSON-serialisable report.

Conventions used everywhere here:
- a pair is accepted when its cosine score is >= the threshold;
- a pair with a failed image scores -inf, so it is a rejection at every finite threshold: it
  lowers TAR for genuine pairs and never raises FAR for impostor pairs, and both stay in the
  denominators (the door saw the attempt);
- rates are fractions in 0..1; anything undefined (no pairs, unsupported FAR) is None.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ("identity", "path", "masked", "mask_type")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
PROTOCOLS = ("all", "masked-vs-unmasked", "unmasked", "masked")
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
# The report keeps at most this many ROC corners (enough for a smooth plot, small JSON).
MAX_ROC_POINTS = 400
# Plot range of the log-scale FAR axis.
PLOT_FAR_MIN = 1e-4

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image of a dataset; `masked` is the ground-truth label from the manifest."""

    identity: str
    path: Path
    masked: bool
    mask_type: str


def load_dataset(data_dir: str | Path) -> list[Sample]:
    """Read a dataset folder, sorted by (identity, path).

    With `manifest.csv` (header identity,path,masked,mask_type; paths relative to the folder)
    the manifest is authoritative. Without it, every sub-folder is one identity and its images
    are unmasked (the lfw-subset layout). Raises ValueError naming the file (and manifest line)
    on a malformed manifest, a missing image or an empty dataset.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    manifest = root / MANIFEST
    samples = _read_manifest(manifest) if manifest.is_file() else _scan_folders(root)
    if not samples:
        raise ValueError(f"no images in dataset {root}")
    samples.sort(key=lambda s: (s.identity, str(s.path)))
    log.info(
        "loaded %d images of %d identities from %s (%d masked)",
        len(samples),
        len({s.identity for s in samples}),
        root,
        sum(s.masked for s in samples),
    )
    return samples


def _read_manifest(manifest: Path) -> list[Sample]:
    root = manifest.parent
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [f for f in MANIFEST_FIELDS if f not in fields]
        if missing:
            raise ValueError(
                f"{manifest}:1: header must contain {','.join(MANIFEST_FIELDS)}; "
                f"missing {','.join(missing)} (got {','.join(fields) or 'nothing'})"
            )
        samples: list[Sample] = []
        seen: dict[Path, int] = {}
        for row in reader:
            line = reader.line_num
            sample = _parse_row(row, root, f"{manifest}:{line}")
            if sample.path in seen:
                raise ValueError(
                    f"{manifest}:{line}: image {sample.path} already listed on line "
                    f"{seen[sample.path]}"
                )
            seen[sample.path] = line
            samples.append(sample)
    return samples


def _parse_row(row: Mapping[str | None, Any], root: Path, where: str) -> Sample:
    # DictReader puts surplus fields under the key None and fills short rows with None.
    if None in row or any(row.get(f) is None for f in MANIFEST_FIELDS):
        raise ValueError(f"{where}: expected {len(MANIFEST_FIELDS)} comma-separated fields")
    identity = row["identity"].strip()
    rel = row["path"].strip()
    masked_raw = row["masked"].strip().lower()
    mask_type = row["mask_type"].strip()
    if not identity:
        raise ValueError(f"{where}: empty identity")
    if not rel:
        raise ValueError(f"{where}: empty path")
    if masked_raw in _TRUE:
        masked = True
    elif masked_raw in _FALSE:
        masked = False
    else:
        raise ValueError(f"{where}: masked must be 0 or 1, got {row['masked']!r}")
    path = root / rel
    if not path.is_file():
        raise ValueError(f"{where}: image not found: {path}")
    if not mask_type:
        mask_type = "unknown" if masked else "no-mask"
    return Sample(identity=identity, path=path, masked=masked, mask_type=mask_type)


def _scan_folders(root: Path) -> list[Sample]:
    samples: list[Sample] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in sorted(person.iterdir()):
            if img.is_file() and img.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(person.name, img, masked=False, mask_type="no-mask"))
    log.info("%s has no %s: identities are folder names, all images unmasked", root, MANIFEST)
    return samples


# --------------------------------------------------------------------------------------------
# Pairs and scores
# --------------------------------------------------------------------------------------------


def make_pairs(
    samples: Sequence[Sample], protocol: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (idx_a, idx_b, genuine) for a protocol; uses the manifest's mask labels.

    - "all": every unordered pair i < j;
    - "masked-vs-unmasked": each masked sample (idx_a, the probe) × each unmasked sample
      (idx_b, the enrolment);
    - "unmasked" / "masked": unordered pairs i < j among unmasked / masked samples only.
    genuine is True when both images show the same identity.
    """
    masked = np.array([s.masked for s in samples], dtype=bool)
    idx = np.arange(len(samples))
    if protocol == "all":
        a, b = np.triu_indices(len(samples), k=1)
    elif protocol == "masked-vs-unmasked":
        a, b = (g.ravel() for g in np.meshgrid(idx[masked], idx[~masked], indexing="ij"))
    elif protocol in ("unmasked", "masked"):
        sub = idx[masked] if protocol == "masked" else idx[~masked]
        i, j = np.triu_indices(len(sub), k=1)
        a, b = sub[i], sub[j]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    ids = np.array([s.identity for s in samples], dtype=object)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    genuine = (ids[a] == ids[b]).astype(bool) if len(a) else np.zeros(0, dtype=bool)
    return a, b, genuine


def failed_rows(emb: np.ndarray) -> np.ndarray:
    """Boolean per image: True where the embedding is missing (any non-finite value)."""
    return ~np.isfinite(np.asarray(emb)).all(axis=1)


def score_pairs(
    emb: np.ndarray,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    extra: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Cosine scores (dot products of L2-normalised rows) as float64; -inf for failed images.

    `extra` gives images extra templates (K, D), e.g. the synthetic masked variants enrollment
    adds: a pair then scores as the door would, the best of each image against the other's
    templates, in both directions (either photo could be the enrolled one).
    """
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    idx_a = np.asarray(idx_a, dtype=np.int64)
    idx_b = np.asarray(idx_b, dtype=np.int64)
    if idx_a.shape != idx_b.shape:
        raise ValueError("idx_a and idx_b differ in length")
    failed = failed_rows(emb)
    clean = np.where(failed[:, None], 0.0, emb).astype(np.float32)
    scores = np.einsum("ij,ij->i", clean[idx_a], clean[idx_b]).astype(np.float64)
    if extra is not None:
        if len(extra) != len(emb):
            raise ValueError(f"extra has {len(extra)} entries for {len(emb)} embeddings")
        for k, (a, b) in enumerate(zip(idx_a, idx_b, strict=True)):
            for probe, other in ((a, b), (b, a)):
                x = extra[other]
                if x is not None and len(x):
                    scores[k] = max(scores[k], float(np.max(np.asarray(x) @ clean[probe])))
    scores[failed[idx_a] | failed[idx_b]] = -np.inf
    return scores


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    """ROC vertices at every distinct finite score, from the strictest threshold down.

    thresholds[0] is +inf (accept nothing: FAR 0, TAR 0); then each distinct finite score in
    descending order. A -inf score is never accepted, so with failures the curve ends below
    (1, 1); AUC and EER close it with the point (1, 1) at threshold -inf ("accept everything,
    failures included"), which makes the trapezoid AUC equal the Mann-Whitney statistic.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    n_genuine: int
    n_impostor: int


def _scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise ValueError(f"{name} scores contain NaN or +inf; failed pairs must be -inf")
    return arr


def _accept_rate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of scores >= each threshold (scores need not be sorted)."""
    ordered = np.sort(scores)
    return (len(ordered) - np.searchsorted(ordered, thresholds, side="left")) / len(ordered)


def roc_curve(genuine_scores: Any, impostor_scores: Any) -> RocCurve:
    """ROC of two score sets; raises ValueError when either is empty."""
    gen = _scores(genuine_scores, "genuine")
    imp = _scores(impostor_scores, "impostor")
    if not len(gen) or not len(imp):
        raise ValueError("ROC needs at least one genuine and one impostor score")
    both = np.concatenate([gen, imp])
    finite = np.unique(both[np.isfinite(both)])[::-1]
    thresholds = np.concatenate([[np.inf], finite])
    return RocCurve(
        far=_accept_rate(imp, thresholds),
        tar=_accept_rate(gen, thresholds),
        thresholds=thresholds,
        n_genuine=len(gen),
        n_impostor=len(imp),
    )


def _closed(curve: RocCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.append(curve.far, 1.0),
        np.append(curve.tar, 1.0),
        np.append(curve.thresholds, -np.inf),
    )


def auc(genuine_scores: Any, impostor_scores: Any) -> float:
    """Mann-Whitney AUC: P(genuine > impostor) + P(tie) / 2, -inf ranked lowest.

    Equals the trapezoid area under the closed ROC curve (see RocCurve).
    """
    gen = _scores(genuine_scores, "genuine")
    imp = _scores(impostor_scores, "impostor")
    if not len(gen) or not len(imp):
        raise ValueError("AUC needs at least one genuine and one impostor score")
    # Average ranks of tied values; -inf sorts first, so failures share the lowest rank.
    _, inverse, counts = np.unique(
        np.concatenate([gen, imp]), return_inverse=True, return_counts=True
    )
    first = np.cumsum(counts) - counts
    ranks = (first + (counts + 1) / 2.0)[inverse.ravel()]
    n_g, n_i = len(gen), len(imp)
    return float((ranks[:n_g].sum() - n_g * (n_g + 1) / 2.0) / (n_g * n_i))


def curve_auc(curve: RocCurve) -> float:
    """Trapezoid area under the closed ROC curve."""
    far, tar, _ = _closed(curve)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def curve_eer(curve: RocCurve) -> tuple[float, float | None]:
    """(EER, threshold) where FAR = FRR, linearly interpolated between the bracketing vertices.

    The threshold is interpolated between the two vertices' thresholds; when one of them is
    infinite the finite one is used. None when the crossing lies between the two infinite ends.
    """
    far, tar, thr = _closed(curve)
    diff = far - (1.0 - tar)  # rises from -1 (accept nothing) to +1 (accept everything)
    k = int(np.argmax(diff >= 0))
    if k == 0:  # cannot happen with a non-empty curve; keeps the maths total
        return float(far[0]), None
    d0, d1 = diff[k - 1], diff[k]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    eer = float(far[k - 1] + w * (far[k] - far[k - 1]))
    t0, t1 = thr[k - 1], thr[k]
    if np.isfinite(t0) and np.isfinite(t1):
        threshold: float | None = float((1.0 - w) * t0 + w * t1)
    elif np.isfinite(t1):
        threshold = float(t1)
    elif np.isfinite(t0):
        threshold = float(t0)
    else:
        threshold = None
    return eer, threshold


def equal_error_rate(genuine_scores: Any, impostor_scores: Any) -> tuple[float, float | None]:
    """(EER, threshold) of two score sets; see curve_eer."""
    return curve_eer(roc_curve(genuine_scores, impostor_scores))


def far_supported(n_impostor: int, far: float) -> bool:
    """A FAR is measurable only when at least one false accept fits in it: n_impostor*far >= 1.

    Below that, every threshold above the top impostor gives FAR 0, and the reported "TAR at
    FAR" would be a claim the data cannot back.
    """
    return n_impostor * far >= 1.0 - 1e-9


def tar_at_far(genuine_scores: Any, impostor_scores: Any, far: float) -> dict[str, Any]:
    """TAR at the lowest threshold whose FAR <= far.

    Returns {far_target, tar, threshold, far_achieved, n_impostor, reason}: reason is None when
    the point is supported; otherwise tar/threshold/far_achieved are None and reason says why
    (too few impostor pairs for that FAR under the rule of far_supported, or no pairs at all).
    """
    gen = _scores(genuine_scores, "genuine")
    imp = _scores(impostor_scores, "impostor")
    out: dict[str, Any] = {
        "far_target": float(far),
        "tar": None,
        "threshold": None,
        "far_achieved": None,
        "n_impostor": len(imp),
        "reason": None,
    }
    if not len(gen) or not len(imp):
        out["reason"] = f"no pairs ({len(gen)} genuine, {len(imp)} impostor)"
        return out
    if not far_supported(len(imp), far):
        need = math.ceil(1.0 / far - 1e-9)
        out["reason"] = (
            f"needs at least {need} impostor pairs (n_impostor * FAR >= 1), have {len(imp)}"
        )
        return out
    curve = roc_curve(gen, imp)
    k = int(np.flatnonzero(curve.far <= far)[-1])  # FAR only falls as the threshold rises
    threshold = float(curve.thresholds[k])
    if not np.isfinite(threshold):
        # Ties at the top impostor score exceed the target: only a threshold just above the
        # highest score meets it (accepts nothing that was seen).
        threshold = float(np.nextafter(np.max(np.where(np.isfinite(imp), imp, -1.0)), np.inf))
    out.update(tar=float(curve.tar[k]), threshold=threshold, far_achieved=float(curve.far[k]))
    return out


def rates_at(genuine_scores: Any, impostor_scores: Any, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) at a fixed threshold; NaN for an empty score set."""
    gen = _scores(genuine_scores, "genuine")
    imp = _scores(impostor_scores, "impostor")
    tar = float(np.mean(gen >= threshold)) if len(gen) else math.nan
    far = float(np.mean(imp >= threshold)) if len(imp) else math.nan
    return tar, far


def far_key(far: float) -> str:
    """1e-3 -> "1e-3" (the JSON key of a FAR target)."""
    mantissa, exponent = f"{far:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Plain Python for json.dumps: numpy scalars/arrays converted, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def roc_points(curve: RocCurve, max_points: int = MAX_ROC_POINTS) -> dict[str, list[float]]:
    """ROC corners for the report: per distinct FAR the highest TAR (lowest threshold).

    When there are more than max_points corners, keep those nearest below a log-spaced FAR
    grid; the staircase through the kept corners never lies above the true curve.
    """
    far, tar, thr = curve.far, curve.tar, curve.thresholds
    # Last vertex of each run of equal FAR = the corner with the most TAR for that FAR.
    last = np.flatnonzero(np.append(far[1:] != far[:-1], True))
    if len(last) > max_points:
        grid = np.concatenate([[0.0], np.logspace(-6, 0, max_points - 1)])
        pick = np.searchsorted(far[last], grid, side="right") - 1
        last = last[np.unique(pick[pick >= 0])]
    return {
        "far": [round(float(v), 8) for v in far[last]],
        "tar": [round(float(v), 8) for v in tar[last]],
        "threshold": [to_jsonable(round(float(v), 6)) for v in thr[last]],
    }


def summarize(
    samples: Sequence[Sample],
    emb: np.ndarray,
    pred_masked: Sequence[bool] | np.ndarray,
    protocol: str,
    threshold_masked: float | None = None,
    threshold_unmasked: float | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    extra: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """The evaluation report for one protocol (what `--json` prints); JSON-serialisable.

    emb: (N, D) embeddings aligned with samples, NaN rows for failed images.
    pred_masked: the mask classifier's decision per image (ignored for failed images).
    threshold_masked / threshold_unmasked: the deployed thresholds for the operating point;
    a pair uses the masked one when either image is classified masked.
    """
    emb = np.asarray(emb)
    if emb.ndim != 2 or len(emb) != len(samples):
        raise ValueError(f"embeddings shape {emb.shape} does not match {len(samples)} samples")
    pred = np.asarray(pred_masked, dtype=bool).ravel()
    if len(pred) != len(samples):
        raise ValueError(f"pred_masked has {len(pred)} entries for {len(samples)} samples")
    failed = failed_rows(emb)
    pred = pred & ~failed
    truth = np.array([s.masked for s in samples], dtype=bool)

    idx_a, idx_b, genuine = make_pairs(samples, protocol)
    scores = score_pairs(emb, idx_a, idx_b, extra)
    gen, imp = scores[genuine], scores[~genuine]

    report: dict[str, Any] = {
        "protocol": protocol,
        "images": len(samples),
        "images_masked": int(truth.sum()),
        "identities": len({s.identity for s in samples}),
        "pairs": {
            "genuine": len(gen),
            "impostor": len(imp),
            "genuine_failed": int(np.isneginf(gen).sum()),
            "impostor_failed": int(np.isneginf(imp).sum()),
        },
        "failure_to_acquire": {
            "count": int(failed.sum()),
            "masked": int((failed & truth).sum()),
            "unmasked": int((failed & ~truth).sum()),
            "rate": float(failed.mean()) if len(failed) else None,
            "paths": [str(s.path) for s, f in zip(samples, failed, strict=True) if f],
        },
        "mask_classifier": _mask_agreement(pred, truth, failed),
    }
    report.update(_score_metrics(gen, imp, fars))
    report["operating_point"] = _operating_point(
        scores,
        genuine,
        pred[idx_a] | pred[idx_b],
        protocol,
        threshold_masked,
        threshold_unmasked,
    )
    return to_jsonable(report)


def _score_metrics(gen: np.ndarray, imp: np.ndarray, fars: Sequence[float]) -> dict[str, Any]:
    details = {far_key(f): tar_at_far(gen, imp, f) for f in fars}
    out: dict[str, Any] = {
        "auc": None,
        "eer": None,
        "eer_threshold": None,
        "tar_at_far": {k: d["tar"] for k, d in details.items()},
        "tar_at_far_detail": details,
        "roc": None,
    }
    if len(gen) and len(imp):
        curve = roc_curve(gen, imp)
        eer, eer_thr = curve_eer(curve)
        out.update(auc=auc(gen, imp), eer=eer, eer_threshold=eer_thr, roc=roc_points(curve))
    return out


def _operating_point(
    scores: np.ndarray,
    genuine: np.ndarray,
    pair_masked: np.ndarray,
    protocol: str,
    threshold_masked: float | None,
    threshold_unmasked: float | None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "threshold": threshold_masked if protocol == "masked-vs-unmasked" else threshold_unmasked,
        "threshold_masked": threshold_masked,
        "threshold_unmasked": threshold_unmasked,
        "tar": None,
        "far": None,
        "pairs_judged_masked": int(pair_masked.sum()),
        "rule": (
            "accept when cosine >= threshold; a pair uses threshold_masked when the mask "
            "classifier marks either image masked, else threshold_unmasked; a failed image "
            "is a rejection"
        ),
    }
    if threshold_masked is None or threshold_unmasked is None:
        return op
    per_pair = np.where(pair_masked, threshold_masked, threshold_unmasked)
    accept = scores >= per_pair
    if genuine.any():
        op["tar"] = float(accept[genuine].mean())
    if (~genuine).any():
        op["far"] = float(accept[~genuine].mean())
    return op


def _mask_agreement(pred: np.ndarray, truth: np.ndarray, failed: np.ndarray) -> dict[str, Any]:
    """Mask classifier vs the manifest labels, over acquired images only."""
    ok = ~failed
    p, t = pred[ok], truth[ok]

    def frac(mask: np.ndarray, hit: np.ndarray) -> float | None:
        return float(hit[mask].mean()) if mask.any() else None

    return {
        "predicted_masked": int(p.sum()),
        "accuracy": frac(np.ones_like(t), p == t),
        "masked_recall": frac(t, p),
        "unmasked_recall": frac(~t, ~p),
    }


# --------------------------------------------------------------------------------------------
# Human-readable output and plot
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text summary of a summarize() report, one metric per line."""
    pairs, fta = report["pairs"], report["failure_to_acquire"]
    rows = [
        ("protocol", str(report["protocol"])),
        (
            "images",
            f"{report['images']} ({report.get('images_masked', 'n/a')} masked), "
            f"{report.get('identities', 'n/a')} identities",
        ),
        (
            "failure to acquire",
            f"{fta['count']} ({fta['masked']} masked, {fta['unmasked']} unmasked)",
        ),
        ("pairs", f"{pairs['genuine']} genuine / {pairs['impostor']} impostor"),
        ("AUC", _fmt(report.get("auc"))),
        (
            "EER",
            f"{_fmt(_pct(report.get('eer')), '.2f')} % at threshold "
            f"{_fmt(report.get('eer_threshold'))}",
        ),
    ]
    for key, detail in report.get("tar_at_far_detail", {}).items():
        if detail["tar"] is None:
            value = f"n/a ({detail['reason']})"
        else:
            value = (
                f"{detail['tar']:.4f} (threshold {detail['threshold']:.4f}, "
                f"FAR {detail['far_achieved']:.5f})"
            )
        rows.append((f"TAR @ FAR {key}", value))
    op = report.get("operating_point") or {}
    if op.get("threshold_masked") is not None:
        rows.append(
            (
                "operating point",
                f"masked {op['threshold_masked']:.4f} / unmasked {op['threshold_unmasked']:.4f}: "
                f"TAR {_fmt(op.get('tar'))}, FAR {_fmt(op.get('far'), '.5f')}",
            )
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


_COLOURS = ((200, 90, 20), (30, 30, 200), (40, 150, 40), (150, 40, 150), (0, 140, 200))


@dataclass(frozen=True)
class _Series:
    label: str
    far: np.ndarray
    tar: np.ndarray
    auc: float | None
    eer: float | None
    op: tuple[float, float] | None


def _as_series(item: Any, n: int) -> _Series:
    if isinstance(item, RocCurve):
        pts = roc_points(item)
        eer, _ = curve_eer(item)
        return _Series(
            f"curve {n + 1}", np.array(pts["far"]), np.array(pts["tar"]), curve_auc(item), eer, None
        )
    if isinstance(item, Mapping) and item.get("roc"):
        op = item.get("operating_point") or {}
        point = (op["far"], op["tar"]) if op.get("far") is not None else None
        return _Series(
            str(item.get("protocol", f"curve {n + 1}")),
            np.array(item["roc"]["far"]),
            np.array(item["roc"]["tar"]),
            item.get("auc"),
            item.get("eer"),
            point,
        )
    raise ValueError("plot_roc needs a summarize() report with a ROC, or a RocCurve")


def plot_roc(report_or_curves: Any, path: str | Path, size: tuple[int, int] = (800, 600)) -> Path:
    """Draw ROC curve(s) to a PNG with OpenCV: log FAR axis 1e-4..1, TAR 0..1.

    Accepts a summarize() report, a RocCurve, or a sequence of those (one line each); the
    operating point of a report is marked with a filled circle.
    """
    import cv2  # only the plot needs OpenCV

    items = (
        list(report_or_curves)
        if isinstance(report_or_curves, (list, tuple))
        else [report_or_curves]
    )
    series = [_as_series(item, n) for n, item in enumerate(items)]
    width, height = size
    left, right, top, bottom = 80, 30, 60, 70
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    pw, ph = width - left - right, height - top - bottom
    decades = -math.log10(PLOT_FAR_MIN)

    def xy(far: float, tar: float) -> tuple[int, int]:
        lx = (math.log10(max(far, PLOT_FAR_MIN)) + decades) / decades
        return round(left + lx * pw), round(top + (1.0 - tar) * ph)

    _draw_grid(cv2, img, xy, decades)
    chance = [xy(f, f) for f in np.logspace(-decades, 0, 60)]
    cv2.polylines(img, [np.array(chance, np.int32)], False, (170, 170, 170), 1, cv2.LINE_AA)
    for n, s in enumerate(series):
        colour = _COLOURS[n % len(_COLOURS)]
        cv2.polylines(img, [np.array(_staircase(s, xy), np.int32)], False, colour, 2, cv2.LINE_AA)
        if s.op is not None:
            cv2.circle(img, xy(*s.op), 6, colour, -1, cv2.LINE_AA)
            cv2.circle(img, xy(*s.op), 6, (0, 0, 0), 1, cv2.LINE_AA)
        text = f"{s.label}: AUC {_fmt(s.auc)}  EER {_fmt(_pct(s.eer), '.2f')}%"
        if s.op is not None:
            text += f"  op TAR {s.op[1]:.3f} @ FAR {s.op[0]:.4f}"
        ly = top + ph - 15 - 22 * (len(series) - 1 - n)
        cv2.line(img, (left + 140, ly - 5), (left + 165, ly - 5), colour, 2, cv2.LINE_AA)
        cv2.putText(
            img, text, (left + 172, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    title = "ROC: " + ", ".join(s.label for s in series)
    cv2.putText(img, title, (left, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"could not write ROC plot to {out}")
    return out


def _staircase(s: _Series, xy: Any) -> list[tuple[int, int]]:
    # Between two corners the attainable TAR stays at the lower one until FAR reaches the next.
    pts = [xy(float(s.far[0]), float(s.tar[0]))]
    for f, t, t_prev in zip(s.far[1:], s.tar[1:], s.tar[:-1], strict=True):
        pts.append(xy(float(f), float(t_prev)))
        pts.append(xy(float(f), float(t)))
    return pts


def _draw_grid(cv2: Any, img: np.ndarray, xy: Any, decades: float) -> None:
    light, dark, font = (225, 225, 225), (120, 120, 120), cv2.FONT_HERSHEY_SIMPLEX
    for e in range(-round(decades), 1):
        for m in range(1, 10) if e < 0 else (1,):
            x, _ = xy(m * 10.0**e, 0)
            cv2.line(img, (x, xy(0, 1)[1]), (x, xy(0, 0)[1]), dark if m == 1 else light, 1)
        x, y = xy(10.0**e, 0)
        label = "1" if e == 0 else f"1e{e}"
        cv2.putText(img, label, (x - 14, y + 22), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(11):
        x, y = xy(PLOT_FAR_MIN, i / 10)
        cv2.line(img, (x, y), (xy(1, 0)[0], y), dark if i in (0, 10) else light, 1)
        cv2.putText(img, f"{i / 10:.1f}", (x - 38, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    x0, y0 = xy(PLOT_FAR_MIN, 0)
    cv2.putText(
        img,
        "FAR (impostor pairs accepted, log scale)",
        (x0 + 160, y0 + 50),
        font,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    cv2.putText(img, "TAR", (x0 - 40, xy(0, 1)[1] - 12), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
