"""Unit tests of edge.evaluate on hand-made scores and tiny generated datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge import evaluate as ev

NEG = -np.inf


def _trapezoid(curve: ev.RocCurve) -> float:
    far = np.append(curve.far, 1.0)
    tar = np.append(curve.tar, 1.0)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


# ---------------------------------------------------------------------------- metrics


def test_perfectly_separated() -> None:
    gen, imp = [0.9, 0.8, 0.7], [0.1, 0.2, 0.3]
    assert ev.auc(gen, imp) == 1.0
    eer, thr = ev.equal_error_rate(gen, imp)
    assert eer == 0.0
    assert thr is not None and 0.3 < thr <= 0.7
    # The lowest threshold whose FAR <= 1/3 is the top impostor itself.
    r = ev.tar_at_far(gen, imp, 1 / 3)
    assert r["tar"] == 1.0
    assert r["threshold"] == 0.3
    assert r["far_achieved"] == pytest.approx(1 / 3)
    assert r["reason"] is None


def test_fully_overlapping_and_reversed() -> None:
    same = [0.5, 0.5, 0.5, 0.5]
    assert ev.auc(same, same) == 0.5
    assert ev.equal_error_rate(same, same) == (0.5, 0.5)
    assert ev.auc([0.1, 0.2], [0.8, 0.9]) == 0.0
    assert ev.equal_error_rate([0.1, 0.2], [0.8, 0.9])[0] == 1.0


def test_ties_between_genuine_and_impostor() -> None:
    gen, imp = [0.5, 0.9], [0.5, 0.1]
    curve = ev.roc_curve(gen, imp)
    np.testing.assert_array_equal(curve.thresholds, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(curve.far, [0, 0, 0.5, 1])
    np.testing.assert_allclose(curve.tar, [0, 0.5, 1, 1])
    assert ev.auc(gen, imp) == pytest.approx(0.875)  # the tie counts one half
    assert ev.curve_auc(curve) == pytest.approx(0.875)
    eer, thr = ev.equal_error_rate(gen, imp)
    assert eer == pytest.approx(0.25)
    assert thr == pytest.approx(0.7)


def test_failures_are_rejections() -> None:
    gen, imp = [0.9, NEG], [0.1, NEG]
    # No threshold accepts a failed pair: TAR tops out at 1/2, FAR at 1/2.
    assert ev.rates_at(gen, imp, -1.0) == (0.5, 0.5)
    curve = ev.roc_curve(gen, imp)
    assert curve.tar.max() == 0.5
    assert curve.far.max() == 0.5
    # -inf ranks lowest; the -inf/-inf tie counts one half: (1 + 1 + 0 + 0.5) / 4.
    assert ev.auc(gen, imp) == pytest.approx(0.625)
    assert _trapezoid(curve) == pytest.approx(0.625)
    assert ev.equal_error_rate(gen, imp) == (pytest.approx(0.5), 0.1)
    r = ev.tar_at_far(gen, imp, 0.5)
    assert (r["tar"], r["threshold"], r["far_achieved"]) == (0.5, 0.1, 0.5)


def test_mann_whitney_equals_trapezoid_on_random_scores() -> None:
    rng = np.random.default_rng(3)
    gen = np.round(rng.normal(0.6, 0.2, 300), 2)  # rounding makes plenty of ties
    imp = np.round(rng.normal(0.1, 0.2, 2000), 2)
    gen[:7] = NEG
    imp[:11] = NEG
    curve = ev.roc_curve(gen, imp)
    assert ev.auc(gen, imp) == pytest.approx(_trapezoid(curve), abs=1e-12)
    # FAR and TAR never rise with the threshold.
    assert np.all(np.diff(curve.far) >= 0) and np.all(np.diff(curve.tar) >= 0)


def test_tar_at_far_unsupported_needs_enough_impostors() -> None:
    gen, imp = np.linspace(0.5, 1, 10), np.linspace(0, 0.4, 10)
    r = ev.tar_at_far(gen, imp, 1e-2)
    assert r["tar"] is None and r["threshold"] is None
    assert "100 impostor pairs" in r["reason"] and "have 10" in r["reason"]
    assert ev.tar_at_far(gen, imp, 0.1)["tar"] == 1.0
    assert ev.tar_at_far([], imp, 0.1)["reason"].startswith("no pairs")


def test_tar_at_far_picks_lowest_threshold_and_respects_ties_at_top() -> None:
    imp = np.array([0.9, 0.9] + [0.1] * 8)
    gen = np.array([0.95, 0.92, 0.5])
    r = ev.tar_at_far(gen, imp, 0.1)  # accepting 0.9 would give FAR 0.2
    assert (r["threshold"], r["far_achieved"]) == (0.92, 0.0)
    assert r["tar"] == pytest.approx(2 / 3)
    # The lowest threshold with FAR <= 0.2 is the genuine 0.5, not the impostor 0.9.
    r = ev.tar_at_far(gen, imp, 0.2)
    assert (r["threshold"], r["far_achieved"], r["tar"]) == (0.5, pytest.approx(0.2), 1.0)
    assert ev.rates_at(gen, imp, r["threshold"]) == (1.0, pytest.approx(0.2))
    # Tied impostors at the very top: only a threshold just above them meets FAR 0.1.
    r = ev.tar_at_far([0.5], imp, 0.1)
    assert r["threshold"] == np.nextafter(0.9, 1.0)
    assert (r["tar"], r["far_achieved"]) == (0.0, 0.0)


def test_bad_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ev.auc([np.nan], [0.1])
    with pytest.raises(ValueError, match="at least one"):
        ev.roc_curve([], [0.1])


def test_far_key() -> None:
    assert [ev.far_key(f) for f in (1e-1, 1e-2, 1e-3, 1e-4, 5e-3)] == [
        "1e-1",
        "1e-2",
        "1e-3",
        "1e-4",
        "5e-3",
    ]


# ---------------------------------------------------------------------------- datasets


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def _manifest_dataset(root: Path, rows: list[str] | None = None) -> Path:
    rows = rows or [
        "B,B/b2.png,0,no-mask",
        "A,A/a1.png,1,surgical",
        "A,A/a2.png,0,no-mask",
        "B,B/b1.png,1,cloth",
        "C,C/c1.png,0,no-mask",
    ]
    for row in rows:
        _touch(root, row.split(",")[1])
    (root / "manifest.csv").write_text("identity,path,masked,mask_type\n" + "\n".join(rows) + "\n")
    return root


def test_load_manifest_sorted(tmp_path: Path) -> None:
    samples = ev.load_dataset(_manifest_dataset(tmp_path))
    assert [(s.identity, s.path.name, s.masked) for s in samples] == [
        ("A", "a1.png", True),
        ("A", "a2.png", False),
        ("B", "b1.png", True),
        ("B", "b2.png", False),
        ("C", "c1.png", False),
    ]
    assert samples[0].mask_type == "surgical"
    assert samples[0].path == tmp_path / "A" / "a1.png"


@pytest.mark.parametrize(
    ("protocol", "n_pairs", "n_genuine"),
    [("all", 10, 2), ("masked-vs-unmasked", 6, 2), ("unmasked", 3, 0), ("masked", 1, 0)],
)
def test_make_pairs_counts(tmp_path: Path, protocol: str, n_pairs: int, n_genuine: int) -> None:
    samples = ev.load_dataset(_manifest_dataset(tmp_path))
    a, b, genuine = ev.make_pairs(samples, protocol)
    assert len(a) == len(b) == len(genuine) == n_pairs
    assert int(genuine.sum()) == n_genuine
    if protocol == "masked-vs-unmasked":
        assert all(samples[i].masked for i in a) and not any(samples[j].masked for j in b)
    else:
        assert np.all(a < b)


def test_make_pairs_unknown_protocol(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        ev.make_pairs(ev.load_dataset(_manifest_dataset(tmp_path)), "masked-vs-masked")


def test_folder_dataset_without_manifest(tmp_path: Path) -> None:
    for rel in (
        "P2/x_0001.jpg",
        "P2/x_0002.JPG",
        "P1/y_0002.jpg",
        "P1/y_0001.jpg",
        "P1/y_0003.jpg",
        "P1/notes.txt",
        ".hidden/z.jpg",
    ):
        _touch(tmp_path, rel)
    samples = ev.load_dataset(tmp_path)
    assert [(s.identity, s.path.name) for s in samples] == [
        ("P1", "y_0001.jpg"),
        ("P1", "y_0002.jpg"),
        ("P1", "y_0003.jpg"),
        ("P2", "x_0001.jpg"),
        ("P2", "x_0002.JPG"),
    ]
    assert all(not s.masked and s.mask_type == "no-mask" for s in samples)
    _, _, genuine = ev.make_pairs(samples, "all")
    assert (len(genuine), int(genuine.sum())) == (10, 4)
    assert len(ev.make_pairs(samples, "masked-vs-unmasked")[0]) == 0


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        ("identity,path,masked", "A,A/a1.png,1", r"manifest\.csv:1: header .*missing mask_type"),
        ("identity,path,masked,mask_type", "A,A/a1.png,2,cloth", r"manifest\.csv:3: masked"),
        (
            "identity,path,masked,mask_type",
            "A,A/none.png,1,cloth",
            r"manifest\.csv:3: image not found",
        ),
        (
            "identity,path,masked,mask_type",
            "A,A/a1.png,1,cloth,extra",
            r"manifest\.csv:3: expected 4",
        ),
        ("identity,path,masked,mask_type", "A,A/a1.png", r"manifest\.csv:3: expected 4"),
        ("identity,path,masked,mask_type", ",A/a1.png,1,cloth", r"manifest\.csv:3: empty identity"),
        (
            "identity,path,masked,mask_type",
            "A,A/a2.png,0,no-mask",
            r"manifest\.csv:3: image .* already listed on line 2",
        ),
    ],
)
def test_malformed_manifest(tmp_path: Path, header: str, row: str, match: str) -> None:
    _touch(tmp_path, "A/a1.png")
    _touch(tmp_path, "A/a2.png")
    first = "A,A/a2.png,0,no-mask" if header.count(",") == 3 else "A,A/a2.png,0"
    (tmp_path / "manifest.csv").write_text(f"{header}\n{first}\n{row}\n")
    with pytest.raises(ValueError, match=match):
        ev.load_dataset(tmp_path)


def test_missing_or_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        ev.load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images"):
        ev.load_dataset(tmp_path)


# ---------------------------------------------------------------------------- scores, report


def test_score_pairs_failed_rows_give_minus_inf() -> None:
    emb = np.array([[1, 0], [0.6, 0.8], [np.nan, np.nan]], dtype=np.float32)
    scores = ev.score_pairs(emb, np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert scores[0] == pytest.approx(0.6)
    assert np.isneginf(scores[1:]).all()


def _gram_embeddings(gram: np.ndarray) -> np.ndarray:
    # Rows whose pairwise dot products are exactly the given (positive-definite) Gram matrix.
    return np.linalg.cholesky(gram).astype(np.float32)


def _three_samples() -> list[ev.Sample]:
    return [
        ev.Sample("A", Path("A/a1.png"), True, "cloth"),
        ev.Sample("A", Path("A/a2.png"), False, "no-mask"),
        ev.Sample("B", Path("B/b1.png"), False, "no-mask"),
    ]


def test_operating_point_uses_masked_threshold_when_either_image_is_masked() -> None:
    emb = _gram_embeddings(np.array([[1, 0.45, 0.2], [0.45, 1, 0.45], [0.2, 0.45, 1]]))
    samples = _three_samples()
    kw = {"threshold_masked": 0.4, "threshold_unmasked": 0.5}
    # a1 masked: the genuine pair (0.45) passes 0.4; a2-b1 (0.45) fails 0.5.
    op = ev.summarize(samples, emb, [True, False, False], "all", **kw)["operating_point"]
    assert (op["tar"], op["far"], op["pairs_judged_masked"]) == (1.0, 0.0, 2)
    # b1 classified masked instead: the genuine pair meets 0.5 no more; a2-b1 passes 0.4.
    op = ev.summarize(samples, emb, [False, False, True], "all", **kw)["operating_point"]
    assert (op["tar"], op["far"]) == (0.0, 0.5)
    assert op["threshold"] == 0.5
    op = ev.summarize(samples, emb, [True, False, True], "masked-vs-unmasked", **kw)
    assert op["operating_point"]["threshold"] == 0.4


def test_summarize_report_is_json_and_counts_failures() -> None:
    rng = np.random.default_rng(0)
    n_ids, per_id = 12, 6
    centres = rng.normal(size=(n_ids, 64))
    samples, rows = [], []
    for k in range(n_ids):
        for j in range(per_id):
            samples.append(
                ev.Sample(
                    f"id{k:02d}",
                    Path(f"id{k:02d}/{j}.png"),
                    j % 2 == 0,
                    "cloth" if j % 2 == 0 else "no-mask",
                )
            )
            rows.append(centres[k] + rng.normal(scale=0.8, size=64))
    emb = np.array(rows, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[0] = np.nan  # a masked image that failed
    pred = np.array([s.masked for s in samples])
    report = ev.summarize(samples, emb, pred, "masked-vs-unmasked", 0.3, 0.35)
    json.dumps(report, allow_nan=False)

    assert report["pairs"] == {
        "genuine": 108,
        "impostor": 1188,
        "genuine_failed": 3,
        "impostor_failed": 33,
    }
    fta = report["failure_to_acquire"]
    assert (fta["count"], fta["masked"], fta["unmasked"]) == (1, 1, 0)
    assert fta["paths"] == [str(Path("id00/0.png"))]
    assert set(report["tar_at_far"]) == {"1e-1", "1e-2", "1e-3", "1e-4"}
    assert report["tar_at_far"]["1e-3"] is not None  # 1188 * 1e-3 >= 1
    assert report["tar_at_far"]["1e-4"] is None  # 1188 impostors cannot support 1e-4
    assert "10000 impostor pairs" in report["tar_at_far_detail"]["1e-4"]["reason"]
    assert 0.9 < report["auc"] <= 1.0
    assert report["operating_point"]["threshold"] == 0.3
    # The operating point recomputed by hand: every pair has a masked image here.
    a, b, genuine = ev.make_pairs(samples, "masked-vs-unmasked")
    scores = ev.score_pairs(emb, a, b)
    assert report["operating_point"]["tar"] == pytest.approx(np.mean(scores[genuine] >= 0.3))
    assert report["operating_point"]["far"] == pytest.approx(np.mean(scores[~genuine] >= 0.3))
    assert report["mask_classifier"]["accuracy"] == 1.0

    table = ev.format_table(report)
    assert "TAR @ FAR 1e-4" in table and "n/a (needs" in table and "AUC" in table


def test_summarize_without_impostors_gives_nulls() -> None:
    samples = [
        ev.Sample("A", Path("a1"), False, "no-mask"),
        ev.Sample("A", Path("a2"), False, "no-mask"),
    ]
    emb = np.eye(2, dtype=np.float32)
    report = ev.summarize(samples, emb, [False, False], "all")
    assert report["auc"] is None and report["eer"] is None and report["roc"] is None
    assert report["operating_point"]["tar"] is None
    json.dumps(report, allow_nan=False)


def test_to_jsonable_handles_numpy_and_non_finite() -> None:
    out = ev.to_jsonable(
        {
            "a": np.float32(0.5),
            "b": np.int64(3),
            "c": math.inf,
            "d": np.array([np.nan, 1.0]),
            "e": np.bool_(True),
            "f": Path("x"),
        }
    )
    assert out == {"a": 0.5, "b": 3, "c": None, "d": [None, 1.0], "e": True, "f": "x"}


def test_roc_points_decimates_and_stays_monotone() -> None:
    rng = np.random.default_rng(1)
    curve = ev.roc_curve(rng.normal(1, 1, 3000), rng.normal(0, 1, 5000))
    pts = ev.roc_points(curve, max_points=100)
    assert 10 < len(pts["far"]) <= 100
    assert np.all(np.diff(pts["far"]) > 0) and np.all(np.diff(pts["tar"]) >= 0)


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    gen, imp = rng.normal(0.6, 0.15, 200), rng.normal(0.1, 0.1, 3000)
    report = {
        "protocol": "demo",
        "auc": ev.auc(gen, imp),
        "eer": ev.equal_error_rate(gen, imp)[0],
        "roc": ev.roc_points(ev.roc_curve(gen, imp)),
        "operating_point": {"far": 1e-3, "tar": 0.9},
    }
    out = ev.plot_roc(report, tmp_path / "plots" / "roc.png")
    img = cv2.imread(str(out))
    assert img.shape == (600, 800, 3)
    assert (img < 250).any()  # something was drawn
    out2 = ev.plot_roc([report, ev.roc_curve(gen, imp)], tmp_path / "two.png", size=(640, 480))
    assert cv2.imread(str(out2)).shape == (480, 640, 3)
    with pytest.raises(ValueError, match="plot_roc"):
        ev.plot_roc({"protocol": "x"}, tmp_path / "bad.png")
