"""Unit tests of edge.calibrate on generated scores (identities with different impostor tails)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from edge import calibrate as cal
from edge import evaluate as ev


def _synthetic(
    n_ids: int = 30, per_id: int = 4, spread: float = 0.06, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of n_ids x per_id images; each identity shifts its impostor scores by an offset.

    A few identities with large offsets ("look-alikes") own the impostor tail, which is what
    makes a pooled empirical quantile optimistic for new people.
    """
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per_id)
    offset = rng.normal(0.0, spread, n_ids)
    a, b = np.triu_indices(len(ids), k=1)
    genuine = ids[a] == ids[b]
    impostor = rng.normal(0.0, 0.08, len(a)) + offset[ids[a]] + offset[ids[b]]
    scores = np.where(genuine, rng.normal(0.6, 0.1, len(a)), impostor)
    names = np.array([f"person{k:02d}" for k in range(n_ids)], dtype=object)
    return scores, names[ids[a]], names[ids[b]], genuine


def test_pair_weights_count_duplicated_identities() -> None:
    counts = np.array([[2, 0, 1], [1, 1, 1]])
    w = cal.pair_weights(counts, np.array([0, 0, 1]), np.array([2, 1, 2]))
    np.testing.assert_array_equal(w, [[2, 0, 0], [1, 1, 1]])


def test_weighted_threshold_equals_threshold_on_repeated_pairs() -> None:
    rng = np.random.default_rng(5)
    scores = np.sort(np.round(rng.normal(0, 0.1, 400), 3))[::-1]
    weights = rng.integers(0, 4, size=(1, 400)).astype(float)
    for far in (1e-2, 1e-1):  # tail fit and empirical respectively
        t, _ = cal._weighted_thresholds(scores, weights, far)
        repeated = cal.threshold_for_far(np.repeat(scores, weights[0].astype(int)), far)
        assert t[0] == pytest.approx(repeated["threshold"])


def test_empirical_threshold_when_enough_impostors() -> None:
    imp = np.random.default_rng(0).normal(0, 0.1, 2000)
    r = cal.threshold_for_far(imp, 1e-2)  # 20 expected false accepts >= 5
    assert r["method"] == "empirical" and r["threshold"] == r["empirical"]
    far = np.mean(imp >= r["threshold"])
    assert far <= 1e-2
    assert np.mean(imp >= np.max(imp[imp < r["threshold"]])) > 1e-2  # and it is the lowest


def test_tail_fit_tracks_the_true_quantile_with_few_impostors() -> None:
    sigma, far = 0.1, 1e-3
    true = sigma * NormalDist().inv_cdf(1 - far)
    estimates = [
        cal.threshold_for_far(np.random.default_rng(s).normal(0, sigma, 3000), far)
        for s in range(20)
    ]
    assert all(e["method"] == "exponential-tail" for e in estimates)
    assert np.mean([e["threshold"] for e in estimates]) == pytest.approx(true, abs=0.01)


def test_bootstrap_threshold_is_above_the_empirical_quantile() -> None:
    scores, id_a, id_b, genuine = _synthetic()
    r = cal.choose_threshold(scores, id_a, id_b, genuine, 1e-2, n_boot=500, seed=1)
    json.dumps(r, allow_nan=False)
    assert r["identities"] == 30
    assert r["impostor_pairs"] == int((~genuine).sum())
    assert r["method"] == "empirical"
    assert r["threshold"] > r["empirical_threshold"]
    assert r["far_on_calibration_pairs"] < 1e-2
    boot = r["bootstrap"]
    assert boot["valid"] == 500 and boot["p05"] < boot["p50"] < boot["p95"]
    assert boot["p95"] == pytest.approx(r["threshold"])
    # Same seed, same answer.
    assert cal.choose_threshold(scores, id_a, id_b, genuine, 1e-2, n_boot=500, seed=1) == r


def test_failed_impostor_pairs_do_not_move_the_threshold() -> None:
    scores, id_a, id_b, genuine = _synthetic(n_ids=12)
    base = cal.choose_threshold(scores, id_a, id_b, genuine, 1e-2, n_boot=100)
    failed = scores.copy()
    failed[np.flatnonzero(~genuine)[:5]] = -np.inf
    kept = ~np.isin(np.arange(len(scores)), np.flatnonzero(~genuine)[:5])
    with_failures = cal.choose_threshold(failed, id_a, id_b, genuine, 1e-2, n_boot=100)
    without = cal.choose_threshold(
        scores[kept], id_a[kept], id_b[kept], genuine[kept], 1e-2, n_boot=100
    )
    assert with_failures["impostor_pairs_failed"] == 5
    assert with_failures["threshold"] == without["threshold"]
    assert base["impostor_pairs_failed"] == 0


def test_cross_validation_reports_held_out_far() -> None:
    scores, id_a, id_b, genuine = _synthetic()
    cv = cal.cross_validate(scores, id_a, id_b, genuine, 1e-2, folds=5, repeats=3, n_boot=100)
    json.dumps(cv, allow_nan=False)
    assert len(cv["per_fold"]) == 15
    for fold in cv["per_fold"]:
        assert fold["identities_train"] + fold["identities_held_out"] == 30
        assert fold["impostor_pairs_test"] > 0 and fold["genuine_pairs_test"] > 0
    for name in ("bootstrap", "empirical"):
        pooled = cv[name]
        assert 0 <= pooled["far"] <= 1 and 0 <= pooled["tar"] <= 1
        assert pooled["far_ratio_to_target"] == pytest.approx(pooled["far"] / 1e-2)
        fa = sum(f[name]["false_accepts"] for f in cv["per_fold"])
        assert pooled["far"] == pytest.approx(fa / pooled["impostor_comparisons"])
    # The bootstrap margin lowers the FAR measured on people left out of calibration.
    assert cv["bootstrap"]["far"] < cv["empirical"]["far"]
    assert cv["bootstrap"]["threshold_mean"] > cv["empirical"]["threshold_mean"]


def test_cross_validation_is_fast_enough() -> None:
    scores, id_a, id_b, genuine = _synthetic(n_ids=26, per_id=4)  # ~5,000 pairs
    assert 4500 < len(scores) < 6000
    start = time.perf_counter()
    cal.cross_validate(scores, id_a, id_b, genuine, 1e-3)
    assert time.perf_counter() - start < 5.0  # ~1 s here; loose for slow CI machines


def test_calibrate_combines_and_serialises() -> None:
    scores, id_a, id_b, genuine = _synthetic(n_ids=20)
    r = cal.calibrate(
        scores, id_a, id_b, genuine, 1e-3, protocol="all", n_boot=200, repeats=2, cv_n_boot=50
    )
    json.dumps(r, allow_nan=False)
    assert r["threshold"] == r["choose"]["threshold"]
    assert r["choose"]["method"] == "exponential-tail"  # 1,400 impostors x 1e-3 < 5
    assert r["cross_validation"]["bootstrap"]["far"] is not None
    few = _synthetic(n_ids=5)
    r = cal.calibrate(*few, 1e-2, n_boot=50)
    assert r["cross_validation"] is None and "7 identities" in r["cross_validation_skipped"]


def test_calibrate_samples_builds_protocol_pairs() -> None:
    rng = np.random.default_rng(4)
    samples, rows = [], []
    centres = rng.normal(size=(10, 32))
    for k in range(10):
        for j in range(4):
            samples.append(ev.Sample(f"p{k}", Path(f"p{k}/{j}.png"), j < 2, "x"))
            rows.append(centres[k] + rng.normal(scale=0.7, size=32))
    emb = np.array(rows, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    r = cal.calibrate_samples(
        samples, emb, "masked-vs-unmasked", 1e-2, n_boot=50, repeats=1, cv_n_boot=20
    )
    assert r["protocol"] == "masked-vs-unmasked"
    assert r["choose"]["impostor_pairs"] == 20 * 20 - 10 * 4
    assert r["choose"]["genuine_pairs"] == 40


def test_invalid_inputs_raise() -> None:
    scores, id_a, id_b, genuine = _synthetic(n_ids=6)
    with pytest.raises(ValueError, match="genuine must be True exactly"):
        cal.choose_threshold(scores, id_a, id_b, ~genuine, 1e-2)
    with pytest.raises(ValueError, match="target_far"):
        cal.choose_threshold(scores, id_a, id_b, genuine, 0.0)
    bad = scores.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cal.choose_threshold(bad, id_a, id_b, genuine, 1e-2)
    one = id_a == id_a[0]
    one &= id_b == id_a[0]
    with pytest.raises(ValueError, match="two identities"):
        cal.choose_threshold(scores[one], id_a[one], id_b[one], genuine[one], 1e-2)
    with pytest.raises(ValueError, match="folds"):
        cal.cross_validate(scores, id_a, id_b, genuine, 1e-2, folds=5)
