"""Cosine matching and the float32 gallery, against brute-force loops on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.config import MatchConfig
from edge.match import Gallery, Match, cosine, threshold_for

DIM = 128


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_gallery(
    rng: np.random.Generator, people: int, per_person: int
) -> tuple[Gallery, np.ndarray, list[str]]:
    templates = rng.normal(size=(people * per_person, DIM)).astype(np.float32)
    labels = [f"p{i // per_person:03d}" for i in range(len(templates))]
    g = Gallery(DIM)
    for i in range(people):
        g.add(f"p{i:03d}", templates[i * per_person : (i + 1) * per_person])
    return g, templates, labels


# ------------------------------------------------------------------- cosine


def test_cosine_known_values() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 1.0]), np.array([3.0, 3.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([-5.0, 0.0])) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(math.sqrt(0.5))


def test_cosine_of_a_zero_vector_is_zero() -> None:
    assert cosine(np.zeros(DIM), np.ones(DIM)) == 0.0


def test_cosine_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="embedding sizes differ: 128 vs 512"):
        cosine(np.ones(128), np.ones(512))


# Embedding-like magnitudes. (Components near 1e-20 underflow float32's norm product in
# `cosine` and give 0.0; no embedder produces such vectors.)
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32).filter(lambda x: x == 0 or abs(x) > 1e-3)


@settings(max_examples=60, deadline=None, database=None)
@given(arrays(np.float32, 16, elements=finite), arrays(np.float32, 16, elements=finite))
def test_cosine_matches_the_formula(a: np.ndarray, b: np.ndarray) -> None:
    na, nb = np.linalg.norm(a.astype(np.float64)), np.linalg.norm(b.astype(np.float64))
    want = 0.0 if na * nb == 0 else float(a.astype(np.float64) @ b.astype(np.float64) / (na * nb))
    got = cosine(a, b)
    assert -1.0 - 1e-5 <= got <= 1.0 + 1e-5
    assert got == pytest.approx(want, abs=1e-4)
    assert got == pytest.approx(cosine(b, a), abs=1e-6)


# ------------------------------------------------------------------- thresholds


def test_threshold_for_picks_the_masked_threshold() -> None:
    cfg = MatchConfig(threshold_unmasked=0.45, threshold_masked=0.33)
    assert threshold_for(cfg, masked=True) == 0.33
    assert threshold_for(cfg, masked=False) == 0.45


# ------------------------------------------------------------------- gallery


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g, templates, labels = _random_gallery(rng, people=40, per_person=3)
    for _ in range(25):
        probe = rng.normal(size=DIM).astype(np.float32)
        brute = [cosine(probe, t) for t in templates]
        best = int(np.argmax(brute))
        m = g.search(probe)
        assert m.index == best and m.label == labels[best]
        assert m.score == pytest.approx(brute[best], abs=1e-5)
        np.testing.assert_allclose(g.scores(probe), brute, atol=1e-5)


def test_search_finds_a_noisy_copy_of_a_template() -> None:
    rng = np.random.default_rng(5)
    g, templates, labels = _random_gallery(rng, people=200, per_person=2)
    for i in rng.choice(len(templates), 20, replace=False):
        probe = templates[i] + 0.1 * rng.normal(size=DIM).astype(np.float32)
        m = g.search(probe)
        assert m.label == labels[i] and m.index == i and m.score > 0.9


def test_best_per_label_equals_brute_force() -> None:
    rng = np.random.default_rng(11)
    g, templates, labels = _random_gallery(rng, people=15, per_person=4)
    probe = rng.normal(size=DIM).astype(np.float32)
    want: dict[str, float] = {}
    for label, t in zip(labels, templates, strict=True):
        want[label] = max(want.get(label, -2.0), cosine(probe, t))
    got = g.best_per_label(probe)
    assert got.keys() == want.keys()
    for label, score in want.items():
        assert got[label] == pytest.approx(score, abs=1e-5)
    assert max(got, key=got.get) == g.search(probe).label


def test_templates_are_stored_normalised() -> None:
    g = Gallery(4)
    g.add("a", np.array([3.0, 0.0, 0.0, 0.0]))
    g.add("b", np.array([[0.0, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, 0.0]]))
    assert len(g) == 3 and g.labels == ["a", "b", "b"]
    np.testing.assert_allclose(g.scores(np.array([0.0, 5.0, 0.0, 0.0])), [0.0, 0.0, 1.0], atol=1e-6)


def test_empty_gallery() -> None:
    g = Gallery(DIM)
    probe = np.ones(DIM, np.float32)
    assert len(g) == 0
    assert g.search(probe) == Match(None, float("-inf"), -1)
    assert g.best_per_label(probe) == {}
    assert g.scores(probe).shape == (0,)


def test_probe_dimension_mismatch() -> None:
    g, _, _ = _random_gallery(np.random.default_rng(0), people=2, per_person=1)
    for bad in (np.ones(DIM // 2), np.ones(DIM * 4)):
        with pytest.raises(ValueError, match=f"probe has {bad.size} dimensions, gallery {DIM}"):
            g.search(bad)
        with pytest.raises(ValueError, match="dimensions"):
            g.best_per_label(bad)


def test_template_of_the_wrong_size_is_refused() -> None:
    g = Gallery(DIM)
    with pytest.raises(ValueError):
        g.add("x", np.ones(DIM - 28))
    assert len(g) == 0


def test_template_twice_the_size_is_refused() -> None:
    g = Gallery(DIM)
    with pytest.raises(ValueError, match="dimension"):
        g.add("x", np.ones(DIM * 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_gallery_keeps_float32(dtype) -> None:
    g = Gallery(8)
    g.add("a", np.arange(1, 17).reshape(2, 8).astype(dtype))
    assert g._m.dtype == np.float32 and g._m.flags["C_CONTIGUOUS"]
    scores = g.scores(np.ones(8, dtype))
    assert scores.dtype == np.float32
    g.add("b", np.ones(8, dtype))
    assert g._m.dtype == np.float32 and g._m.shape == (3, 8)
