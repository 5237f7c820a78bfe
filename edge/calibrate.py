"""Choose a match threshold for a target FAR that should hold on people not seen here.

With ~26 identities the impostor distribution is dominated by a few "look-alike" identities:
an empirical impostor quantile taken on them drifted 2-7x above the target FAR on new people.
So the threshold comes from a bootstrap over IDENTITIES (people, not pairs, are the sampling
unit): each replicate redraws the people with replacement, recomputes the FAR-target
threshold on the impostor pairs among them, and the `confidence` quantile of the replicates is
the threshold, a stated margin against a new population. Cross-validation by identity then
measures how that margin fares on held-out people.

Tail estimate per replicate (documented choice):
- when the replicate holds at least MIN_TAIL_EVENTS expected false accepts
  (impostor_count * far >= 5), the empirical threshold: the lowest observed score whose FAR
  is <= target;
- otherwise a peaks-over-threshold fit with an exponential tail: u is the score exceeded by a
  fraction q_u = max(10 * far, 25 / count) of the impostors (capped at 0.5), the excesses over
  u are taken as exponential with their mean beta, and the threshold is
  u + beta * ln(q / far) (q the fraction actually above u). An exponential tail is heavier than
  the Gaussian-looking tail of cosine impostor scores, so it errs towards a higher threshold,
  which is the safe side for a door.

Calibration uses impostor pairs with a finite score only (FAR conditional on both faces being
acquired: slightly conservative); measured FARs count failed pairs as rejections, as in
edge.evaluate. Pure NumPy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge import evaluate

log = logging.getLogger(__name__)

MIN_TAIL_EVENTS = 5.0  # expected false accepts needed to trust the empirical quantile
TAIL_FACTOR = 10.0  # the tail fit starts at an exceedance fraction of TAIL_FACTOR * far ...
TAIL_MIN_EXCEEDANCES = 25.0  # ... but with at least this many impostor pairs above it
TAIL_MAX_FRACTION = 0.5
BOOT_CHUNK = 128  # replicates per vectorised block: bounds memory to chunk x impostor pairs


# --------------------------------------------------------------------------------------------
# Weighted threshold estimators (one row of weights per replicate)
# --------------------------------------------------------------------------------------------


def _tie_bounds(desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For scores sorted descending: first and last index of each element's tie group."""
    n = len(desc)
    new = np.ones(n, dtype=bool)
    new[1:] = desc[1:] != desc[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    return np.repeat(starts, sizes), np.repeat(starts + sizes - 1, sizes)


def _weighted_thresholds(
    desc: np.ndarray, weights: np.ndarray, far: float
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold for `far` per weight row, and whether the tail fit was used.

    desc: impostor scores sorted descending (finite); weights: (R, n) non-negative counts of
    each pair in each replicate. Returns (thresholds (R,), used_tail (R,)); NaN where a
    replicate has no impostor pair.
    """
    first, last = _tie_bounds(desc)
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        empirical = _empirical_rows(desc, weights, cum, total, last, far)
        tail = _exponential_tail_rows(desc, weights, cum, total, first, far)
    use_tail = (total * far < MIN_TAIL_EVENTS) & np.isfinite(tail)
    out = np.where(use_tail, tail, empirical)
    out[total <= 0] = np.nan
    return out, use_tail & (total > 0)


def _empirical_rows(
    desc: np.ndarray,
    weights: np.ndarray,
    cum: np.ndarray,
    total: np.ndarray,
    last: np.ndarray,
    far: float,
) -> np.ndarray:
    # FAR at threshold desc[i] counts the whole tie group of i; it only grows along i.
    ok = (cum[:, last] <= far * total[:, None] + 1e-12) & (weights > 0)
    has = ok.any(axis=1)
    lowest = desc.shape[0] - 1 - np.argmax(ok[:, ::-1], axis=1)
    above_top = np.nextafter(desc[np.argmax(weights > 0, axis=1)], np.inf)
    return np.where(has, desc[lowest], above_top)


def _exponential_tail_rows(
    desc: np.ndarray,
    weights: np.ndarray,
    cum: np.ndarray,
    total: np.ndarray,
    first: np.ndarray,
    far: float,
) -> np.ndarray:
    q_u = np.clip(np.maximum(TAIL_FACTOR * far, TAIL_MIN_EXCEEDANCES / total), 0, TAIL_MAX_FRACTION)
    j = np.argmax(cum >= (q_u * total)[:, None], axis=1)  # u = desc[j]
    u = desc[j]
    above = np.arange(desc.shape[0])[None, :] < first[j][:, None]  # strictly above u
    mass = (weights * above).sum(axis=1)
    excess = (weights * above * (desc[None, :] - u[:, None])).sum(axis=1)
    beta = excess / mass
    q = mass / total
    t = u + beta * np.maximum(np.log(q / far), 0.0)
    return np.where(mass > 0, t, np.nan)


def threshold_for_far(impostor_scores: Any, far: float) -> dict[str, Any]:
    """Threshold for `far` on one impostor sample (each pair weighted 1), with its method."""
    imp = np.asarray(impostor_scores, dtype=np.float64).ravel()
    imp = np.sort(imp[np.isfinite(imp)])[::-1]
    if not len(imp):
        return {"threshold": None, "method": None, "empirical": None}
    w = np.ones((1, len(imp)))
    t, tail = _weighted_thresholds(imp, w, far)
    emp = _empirical_rows(imp, w, np.cumsum(w, axis=1), w.sum(axis=1), _tie_bounds(imp)[1], far)
    return {
        "threshold": float(t[0]),
        "method": "exponential-tail" if tail[0] else "empirical",
        "empirical": float(emp[0]),
    }


# --------------------------------------------------------------------------------------------
# Bootstrap over identities
# --------------------------------------------------------------------------------------------


def _codes(id_a: Any, id_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(id_a).ravel()
    b = np.asarray(id_b).ravel()
    if a.shape != b.shape:
        raise ValueError("id_a and id_b differ in length")
    names, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    inverse = inverse.ravel()
    return names, inverse[: len(a)], inverse[len(a) :]


def _check(scores: Any, genuine: Any, code_a: np.ndarray, code_b: np.ndarray) -> tuple:
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(genuine, dtype=bool).ravel()
    if not (len(s) == len(g) == len(code_a)):
        raise ValueError("scores, genuine and identity arrays must have the same length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; failed pairs must be -inf")
    if not np.array_equal(g, code_a == code_b):
        raise ValueError("genuine must be True exactly when the two identities are equal")
    return s, g


def pair_weights(counts: np.ndarray, code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
    """How often each impostor pair occurs in each replicate: count(a) * count(b).

    counts: (R, K) draws per identity. An identity drawn twice is two distinct people, so a
    pair (a, b) appears once for each copy of a times each copy of b.
    """
    return counts[:, code_a] * counts[:, code_b]


def choose_threshold(
    scores: Any,
    id_a: Any,
    id_b: Any,
    genuine: Any,
    target_far: float,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Threshold for target_far with a margin against new people (identity bootstrap).

    Returns a JSON-serialisable dict: threshold (the `confidence` quantile of the replicate
    thresholds), point_estimate and method on all data, empirical_threshold (plain quantile),
    identities, impostor/genuine counts, bootstrap spread, and the FAR/TAR of the chosen
    threshold on these same pairs (optimistic by construction).
    """
    if not 0 < target_far < 1:
        raise ValueError(f"target_far must be in (0, 1), got {target_far}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    names, code_a, code_b = _codes(id_a, id_b)
    s, g = _check(scores, genuine, code_a, code_b)
    imp_ok = ~g & np.isfinite(s)
    if len(names) < 2 or not imp_ok.any():
        raise ValueError("calibration needs impostor pairs between at least two identities")
    order = np.argsort(-s[imp_ok], kind="stable")
    desc = s[imp_ok][order]
    ca, cb = code_a[imp_ok][order], code_b[imp_ok][order]

    rng = np.random.default_rng(seed)
    boot, tail_used = [], []
    for start in range(0, n_boot, BOOT_CHUNK):
        r = min(BOOT_CHUNK, n_boot - start)
        counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=r)
        t, tail = _weighted_thresholds(
            desc, pair_weights(counts, ca, cb).astype(np.float64), target_far
        )
        boot.append(t)
        tail_used.append(tail)
    reps = np.concatenate(boot)
    valid = reps[np.isfinite(reps)]
    point = threshold_for_far(desc, target_far)
    threshold = float(np.quantile(valid, confidence)) if len(valid) else point["threshold"]
    tar = float(np.mean(s[g] >= threshold)) if g.any() else None
    far = float(np.mean(s[~g] >= threshold))
    n_imp = int(imp_ok.sum())
    log.info(
        "target FAR %g: bootstrap threshold %.4f (point %.4f, empirical %.4f) over %d people",
        target_far,
        threshold,
        point["threshold"],
        point["empirical"],
        len(names),
    )
    return evaluate.to_jsonable(
        {
            "target_far": target_far,
            "threshold": threshold,
            "confidence": confidence,
            "point_estimate": point["threshold"],
            "method": point["method"],
            "empirical_threshold": point["empirical"],
            "empirical_supported": evaluate.far_supported(n_imp, target_far),
            "identities": len(names),
            "impostor_pairs": n_imp,
            "impostor_pairs_failed": int((~g & ~np.isfinite(s)).sum()),
            "genuine_pairs": int(g.sum()),
            "far_on_calibration_pairs": far,
            "tar_on_calibration_pairs": tar,
            "bootstrap": {
                "n_boot": n_boot,
                "seed": seed,
                "valid": len(valid),
                "tail_fit_fraction": float(np.concatenate(tail_used).mean()) if n_boot else None,
                "mean": float(valid.mean()) if len(valid) else None,
                "std": float(valid.std()) if len(valid) else None,
                "p05": float(np.quantile(valid, 0.05)) if len(valid) else None,
                "p50": float(np.quantile(valid, 0.50)) if len(valid) else None,
                "p95": float(np.quantile(valid, 0.95)) if len(valid) else None,
            },
        }
    )


# --------------------------------------------------------------------------------------------
# Cross-validation by identity
# --------------------------------------------------------------------------------------------


def _fold_result(
    s: np.ndarray,
    g: np.ndarray,
    code_a: np.ndarray,
    code_b: np.ndarray,
    held: np.ndarray,
    target_far: float,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    held_a, held_b = held[code_a], held[code_b]
    train = ~held_a & ~held_b
    test_imp = ~g & (held_a | held_b)
    test_gen = g & held_a
    chosen = choose_threshold(
        s[train],
        code_a[train],
        code_b[train],
        g[train],
        target_far,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
    out: dict[str, Any] = {
        "identities_train": int((~held).sum()),
        "identities_held_out": int(held.sum()),
        "impostor_pairs_train": chosen["impostor_pairs"],
        "impostor_pairs_test": int(test_imp.sum()),
        "genuine_pairs_test": int(test_gen.sum()),
    }
    for name, thr in (
        ("bootstrap", chosen["threshold"]),
        ("empirical", chosen["empirical_threshold"]),
    ):
        out[name] = {
            "threshold": thr,
            "false_accepts": int((s[test_imp] >= thr).sum()),
            "true_accepts": int((s[test_gen] >= thr).sum()),
            "far": float(np.mean(s[test_imp] >= thr)) if test_imp.any() else None,
            "tar": float(np.mean(s[test_gen] >= thr)) if test_gen.any() else None,
        }
    return out


def cross_validate(
    scores: Any,
    id_a: Any,
    id_b: Any,
    genuine: Any,
    target_far: float,
    folds: int = 5,
    seed: int = 0,
    repeats: int = 5,
    n_boot: int = 200,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """k-fold cross-validation by identity of choose_threshold (and of the plain quantile).

    Per fold the threshold is calibrated on pairs among training identities only; FAR is
    measured on impostor pairs with at least one held-out identity and TAR on held-out genuine
    pairs (failed pairs are rejections). Folds are repeated `repeats` times with different
    identity shuffles. Pooled rates = total accepts / total test pairs over all folds and
    repeats (a pair between two held-out folds is tested in each of them).
    """
    names, code_a, code_b = _codes(id_a, id_b)
    s, g = _check(scores, genuine, code_a, code_b)
    if not 2 <= folds <= len(names) - 2:
        raise ValueError(f"folds must be between 2 and identities - 2 ({len(names) - 2})")
    per_fold = []
    for rep in range(repeats):
        perm = np.random.default_rng([seed, rep]).permutation(len(names))
        for k, part in enumerate(np.array_split(perm, folds)):
            held = np.zeros(len(names), dtype=bool)
            held[part] = True
            result = _fold_result(
                s, g, code_a, code_b, held, target_far, n_boot, confidence, seed + 1000 * rep + k
            )
            per_fold.append({"repeat": rep, "fold": k, **result})
    return evaluate.to_jsonable(
        {
            "target_far": target_far,
            "folds": folds,
            "repeats": repeats,
            "n_boot": n_boot,
            "confidence": confidence,
            "identities": len(names),
            "bootstrap": _pooled(per_fold, "bootstrap", target_far),
            "empirical": _pooled(per_fold, "empirical", target_far),
            "per_fold": per_fold,
        }
    )


def _pooled(per_fold: Sequence[dict[str, Any]], name: str, target_far: float) -> dict[str, Any]:
    n_imp = sum(f["impostor_pairs_test"] for f in per_fold)
    n_gen = sum(f["genuine_pairs_test"] for f in per_fold)
    fa = sum(f[name]["false_accepts"] for f in per_fold)
    ta = sum(f[name]["true_accepts"] for f in per_fold)
    fars = [f[name]["far"] for f in per_fold if f[name]["far"] is not None]
    far = fa / n_imp if n_imp else None
    return {
        "far": far,
        "tar": ta / n_gen if n_gen else None,
        "far_ratio_to_target": far / target_far if far is not None else None,
        "false_accepts": fa,
        "impostor_comparisons": n_imp,
        "genuine_comparisons": n_gen,
        "fold_far_max": max(fars) if fars else None,
        "folds_over_target": sum(f > target_far for f in fars),
        "threshold_mean": float(np.mean([f[name]["threshold"] for f in per_fold])),
    }


# --------------------------------------------------------------------------------------------
# One call per protocol
# --------------------------------------------------------------------------------------------


def calibrate(
    scores: Any,
    id_a: Any,
    id_b: Any,
    genuine: Any,
    target_far: float,
    protocol: str = "",
    n_boot: int = 1000,
    confidence: float = 0.95,
    folds: int = 5,
    repeats: int = 5,
    cv_n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """choose_threshold on all pairs plus cross_validate; one JSON-serialisable dict.

    `threshold` is the value to deploy. cross_validation is skipped (None, with a reason) when
    there are too few identities for `folds`.
    """
    chosen = choose_threshold(
        scores, id_a, id_b, genuine, target_far, n_boot=n_boot, confidence=confidence, seed=seed
    )
    n_ids = chosen["identities"]
    cv: dict[str, Any] | None = None
    cv_reason = None
    if folds >= 2 and n_ids >= folds + 2:
        cv = cross_validate(
            scores,
            id_a,
            id_b,
            genuine,
            target_far,
            folds=folds,
            seed=seed,
            repeats=repeats,
            n_boot=cv_n_boot,
            confidence=confidence,
        )
    else:
        cv_reason = f"needs at least folds + 2 = {folds + 2} identities, have {n_ids}"
    return evaluate.to_jsonable(
        {
            "protocol": protocol,
            "target_far": target_far,
            "threshold": chosen["threshold"],
            "choose": chosen,
            "cross_validation": cv,
            "cross_validation_skipped": cv_reason,
        }
    )


def calibrate_samples(
    samples: Sequence[evaluate.Sample],
    emb: np.ndarray,
    protocol: str,
    target_far: float,
    extra: Sequence[np.ndarray | None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """calibrate() on the pairs of `protocol` built from a dataset and its embeddings.

    Use protocol "masked-vs-unmasked" for threshold_masked and "unmasked" for
    threshold_unmasked. `extra`: per-image extra templates (see evaluate.score_pairs).
    kwargs go to calibrate().
    """
    idx_a, idx_b, genuine = evaluate.make_pairs(samples, protocol)
    if not len(idx_a):
        raise ValueError(f"protocol {protocol!r} gives no pairs on this dataset")
    scores = evaluate.score_pairs(emb, idx_a, idx_b, extra)
    ids = np.array([s.identity for s in samples], dtype=object)
    return calibrate(
        scores, ids[idx_a], ids[idx_b], genuine, target_far, protocol=protocol, **kwargs
    )
