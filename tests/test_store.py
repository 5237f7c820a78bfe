"""The template store on real SQLite files with real AES-GCM: round trips, versions, hashes,
keys, tampering, deletion, migrations, and a writer process killed at random moments."""

from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Config, parse_config
from edge.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreState,
    Template,
    load_key,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
WRITER = REPO_ROOT / "tests" / "helpers" / "store_writer.py"
DIM = 64


def _unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _jpeg(rng: np.random.Generator) -> bytes:
    face = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _template(
    rng: np.random.Generator,
    model: str = "sface",
    masked: bool = False,
    synthetic: bool = False,
    source: str = "photo",
    crop: bool = True,
    dim: int = DIM,
) -> Template:
    return Template(_unit(rng, dim), model, masked, synthetic, source, _jpeg(rng) if crop else None)


def _raw(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection, as someone editing the file behind MaskGate's back."""
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "templates.db"


@pytest.fixture
def store(db: Path, key: bytes):
    s = Store(db, key)
    yield s
    s.close()


def _people(seed: int = 1) -> list[tuple[str, str | None, list[Template]]]:
    rng = np.random.default_rng(seed)
    return [
        ("alice", "Alice Martin", [_template(rng), _template(rng, masked=True)]),
        (
            "bob.2",
            None,
            [
                _template(rng, masked=True, synthetic=True, source="variant:surgical"),
                _template(rng, crop=False, source="server"),
            ],
        ),
        ("c_3", "Chloé 😀", [_template(rng, model="arcface", dim=32)]),
    ]


def _fill(store: Store, people: list[tuple[str, str | None, list[Template]]]) -> StoreState:
    state = store.state()
    for pid, name, templates in people:
        state = store.enroll(pid, name, templates)
    return state


# -- round trip, versions, hashes --------------------------------------------------------------


def test_round_trip_keeps_every_field(db: Path, key: bytes) -> None:
    people = _people()
    with Store(db, key) as s:
        _fill(s, people)
    with Store(db, key) as s:
        assert [p.person_id for p in s.list()] == ["alice", "bob.2", "c_3"]
        for pid, name, templates in people:
            info = s.get(pid)
            assert (info.name, info.templates) == (name, len(templates))
            assert info.models == sorted({t.model_id for t in templates})
            assert 0 < info.created <= info.updated <= time.time()
            got = s.templates(pid)
            for want, have in zip(templates, got, strict=True):
                assert have.embedding.dtype == np.float32
                assert have.embedding.tobytes() == want.embedding.tobytes()
                assert (have.model_id, have.masked, have.synthetic, have.source) == (
                    want.model_id,
                    want.masked,
                    want.synthetic,
                    want.source,
                )
                assert have.crop_jpeg == want.crop_jpeg
        assert s.state().model_ids == ["arcface", "sface"]


def test_version_only_grows(store: Store) -> None:
    rng = np.random.default_rng(2)
    versions = [store.state().version]
    versions.append(store.enroll("p1", "One", [_template(rng)]).version)
    versions.append(store.enroll("p1", None, [_template(rng)]).version)
    versions.append(store.enroll("p1", None, [_template(rng)], replace=True).version)
    versions.append(store.enroll("p2", None, [_template(rng)]).version)
    versions.append(store.delete("p2").version)
    with pytest.raises(StoreError):
        store.delete("p2")  # a refused change leaves the version alone
    versions.append(store.state().version)
    versions.append(store.replace_all([("p3", None, [_template(rng)])]).version)
    versions.append(store.replace_all([]).version)
    assert versions == sorted(versions)
    assert versions[-1] - versions[0] == 7  # one per committed change
    assert versions[5] == versions[6]


def test_version_survives_reopen(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        state = _fill(s, _people())
    with Store(db, key) as s:
        assert s.state() == state


def test_hash_is_the_same_for_the_same_set_built_another_way(tmp_path: Path) -> None:
    people = _people()
    with Store(tmp_path / "a.db", os.urandom(32)) as a:
        _fill(a, people)
        ha = a.state().hash
    # Another device, another key, persons and templates in the opposite order, partly synced.
    with Store(tmp_path / "b.db", os.urandom(32)) as b:
        b.enroll("c_3", "placeholder", [_template(np.random.default_rng(9))])
        b.replace_all([(pid, name, templates[::-1]) for pid, name, templates in people[::-1]])
        assert b.state().hash == ha


def _mutations() -> dict[str, list[tuple[str, str | None, list[Template]]]]:
    def changed(i: int, j: int, **kw: object) -> list[tuple[str, str | None, list[Template]]]:
        people = _people()
        templates = people[i][2]
        t = templates[j]
        fields = {
            "embedding": t.embedding,
            "model_id": t.model_id,
            "masked": t.masked,
            "synthetic": t.synthetic,
            "source": t.source,
            "crop_jpeg": t.crop_jpeg,
        }
        fields.update(kw)
        templates[j] = Template(**fields)  # type: ignore[arg-type]
        return people

    nudged = _people()[0][2][0].embedding.copy()
    nudged[0] = np.nextafter(nudged[0], np.float32(1))  # one ulp of one value
    renamed = _people()
    renamed[0] = ("alice", "Alice M.", renamed[0][2])
    unnamed = _people()
    unnamed[0] = ("alice", None, unnamed[0][2])
    other_id = _people()
    other_id[0] = ("alice2", "Alice Martin", other_id[0][2])
    extra = _people()
    extra[0][2].append(_template(np.random.default_rng(5)))
    return {
        "name": renamed,
        "no name": unnamed,
        "person id": other_id,
        "masked flag": changed(0, 0, masked=True),
        "synthetic flag": changed(0, 1, synthetic=True),
        "model id": changed(0, 0, model_id="sface2"),
        "one ulp": changed(0, 0, embedding=nudged),
        "one more template": extra,
        "one person less": _people()[:2],
    }


@pytest.mark.parametrize("change", list(_mutations()))
def test_hash_changes_with_any_change(tmp_path: Path, key: bytes, change: str) -> None:
    with Store(tmp_path / "a.db", key) as a, Store(tmp_path / "b.db", key) as b:
        a.replace_all(_people())
        b.replace_all(_mutations()[change])
        assert a.state().hash != b.state().hash


def _lp(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">I", len(raw)) + raw


def test_hash_follows_the_documented_canonical_form(store: Store) -> None:
    # A server computes the same hash from the same description (edge.store.content.content_hash).
    people = _people()
    store.replace_all(people)
    h = hashlib.sha256(b"maskgate-template-set/1\n")
    for pid, name, templates in sorted(people, key=lambda p: p[0]):
        h.update(b"P" + _lp(pid) + (b"\x00" if name is None else b"\x01" + _lp(name)))
        h.update(struct.pack(">I", len(templates)))
        rows = sorted(
            (t.model_id.encode(), t.masked, t.synthetic, t.embedding.astype("<f4").tobytes())
            for t in templates
        )
        for model, masked, synthetic, emb in rows:
            h.update(b"T" + struct.pack(">I", len(model)) + model + bytes([masked, synthetic]))
            h.update(struct.pack(">I", len(emb) // 4) + emb)
    assert store.state().hash == h.hexdigest()


def test_state_for_one_model_covers_only_that_model(tmp_path: Path, key: bytes) -> None:
    people = _people()
    only_sface = [
        (pid, name, [t for t in ts if t.model_id == "sface"])
        for pid, name, ts in people
        if any(t.model_id == "sface" for t in ts)
    ]
    with Store(tmp_path / "a.db", key) as a, Store(tmp_path / "b.db", key) as b:
        a.replace_all(people)
        b.replace_all(only_sface)
        sa, sb = a.state("sface"), b.state()
        assert (sa.hash, sa.persons, sa.templates) == (sb.hash, sb.persons, sb.templates)
        assert (sa.persons, sa.templates) == (2, 4)
        assert sa.model_ids == ["arcface", "sface"]
        assert a.state().hash != sa.hash


# -- keys and tampering ------------------------------------------------------------------------


def test_another_key_is_refused(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    with pytest.raises(StoreError, match="encrypted with a different key"):
        Store(db, os.urandom(32))
    with Store(db, key) as s:  # and the right key still opens it
        assert len(s.list()) == 3


def _flip_bit_in_file(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "the blob was not found in the file"
    data[at + len(needle) // 2] ^= 0x08
    path.write_bytes(bytes(data))


def test_one_flipped_bit_in_an_embedding_names_the_person(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    with _raw(db) as c:
        tid, blob = c.execute(
            "SELECT template_id, embedding FROM templates WHERE person_id = 'bob.2' LIMIT 1"
        ).fetchone()
    c.close()  # closing the last connection moves the WAL into the file
    _flip_bit_in_file(db, blob)
    with pytest.raises(
        StoreError, match=rf"template {tid} of person 'bob.2'.*failed authentication"
    ):
        Store(db, key)


def test_a_flipped_bit_in_a_name_names_the_person(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    c = _raw(db)
    (blob,) = c.execute("SELECT name FROM persons WHERE person_id = 'alice'").fetchone()
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    c.execute("UPDATE persons SET name = ? WHERE person_id = 'alice'", (bytes(flipped),))
    c.close()
    with pytest.raises(StoreError, match="name of person 'alice'"):
        Store(db, key)


def test_an_edited_flag_fails_authentication(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    c = _raw(db)
    c.execute("UPDATE templates SET masked = 1 - masked WHERE person_id = 'alice'")
    c.close()
    with pytest.raises(StoreError, match=r"person 'alice'.*failed authentication"):
        Store(db, key)


def test_a_blob_moved_to_another_row_fails(db: Path, key: bytes) -> None:
    rng = np.random.default_rng(3)
    with Store(db, key) as s:
        s.enroll("alice", None, [_template(rng)])
        s.enroll("mallory", None, [_template(rng)])
    c = _raw(db)
    (blob,) = c.execute("SELECT embedding FROM templates WHERE person_id = 'alice'").fetchone()
    c.execute("UPDATE templates SET embedding = ? WHERE person_id = 'mallory'", (blob,))
    c.close()
    with pytest.raises(StoreError, match=r"person 'mallory'.*moved from another row"):
        Store(db, key)


def test_a_row_removed_behind_our_back_breaks_the_seal(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    c = _raw(db)
    c.execute("DELETE FROM templates WHERE person_id = 'alice' AND masked = 1")
    c.close()
    with pytest.raises(StoreError, match="does not match its seal"):
        Store(db, key)


def test_a_damaged_crop_is_reported_where_it_is_read(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    c = _raw(db)
    (tid, blob) = c.execute(
        "SELECT template_id, crop FROM templates WHERE person_id = 'alice' LIMIT 1"
    ).fetchone()
    c.execute("UPDATE templates SET crop = ? WHERE template_id = ?", (blob[:-1] + b"\0", tid))
    c.close()
    with Store(db, key) as s:  # embeddings are intact: the door still opens
        assert len(s.gallery("sface")) == 4
        report = s.integrity_check()
        assert f"crop of template {tid} of person 'alice'" in report
        with pytest.raises(StoreError, match=f"crop of template {tid}"):
            s.templates("alice")


def _cfg(state_dir: Path) -> Config:
    return parse_config({"daemon": {"state_dir": str(state_dir)}}, base_dir=state_dir)


def test_a_store_copied_to_another_device_does_not_load(tmp_path: Path) -> None:
    door_a, door_b = _cfg(tmp_path / "a"), _cfg(tmp_path / "b")
    with Store.open(door_a) as s:
        _fill(s, _people())
    with Store.open(door_b) as s:  # door b has its own key file
        pass
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "b" / f"templates.db{suffix}").unlink(missing_ok=True)
    shutil.copy2(tmp_path / "a" / "templates.db", tmp_path / "b" / "templates.db")
    with pytest.raises(StoreError, match="encrypted with a different key"):
        Store.open(door_b)


def test_open_will_not_invent_a_key_for_an_existing_store(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with Store.open(cfg) as s:
        _fill(s, _people())
    (tmp_path / "template.key").unlink()
    with pytest.raises(StoreError, match="key file missing"):
        Store.open(cfg)
    assert not (tmp_path / "template.key").exists()


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "new" / "template.key"
    key = load_key(path, None)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert load_key(path, None) == key
    assert [p.name for p in path.parent.iterdir()] == ["template.key"]  # no temporary left


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "template.key"
    load_key(path, None)
    path.chmod(0o644)
    with pytest.raises(StoreError, match=r"accessible by group or others \(mode 0644\).*chmod 600"):
        load_key(path, None)


@pytest.mark.parametrize("content", [b"", b"abcd", b"\x01" * 31, b"z" * 64, b"00" * 33], ids=repr)
def test_key_file_of_the_wrong_form_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "template.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(StoreError, match="not a template key"):
        load_key(path, None)


def test_raw_32_byte_key_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "template.key"
    raw = os.urandom(32)
    path.write_bytes(raw)
    path.chmod(0o600)
    assert load_key(path, None) == raw


def test_systemd_credential_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = os.urandom(32)
    (creds / "maskgate-template-key").write_text(key.hex() + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    key_file = tmp_path / "state" / "template.key"
    assert load_key(key_file, "maskgate-template-key") == key
    assert not key_file.exists()
    # A credential directory without that credential falls back to the key file.
    other = load_key(key_file, "another-name")
    assert other != key and key_file.exists()


# -- deletion ----------------------------------------------------------------------------------


def _windows(blob: bytes, size: int = 48) -> list[bytes]:
    # Blobs over a page long are split across overflow pages: look for pieces, not the whole.
    size = min(size, len(blob))
    return [blob[i : i + size] for i in range(0, len(blob) - size + 1, 97)]


def _on_disk(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def test_delete_really_removes_the_bytes(store: Store, db: Path) -> None:
    rng = np.random.default_rng(4)
    store.enroll("forget-me-7f3a", "Forget Me", [_template(rng), _template(rng, masked=True)])
    store.enroll("keep-me", None, [_template(rng)])
    c = _raw(db)
    rows = c.execute("SELECT embedding, crop FROM templates WHERE person_id = 'forget-me-7f3a'")
    gone = [blob for row in rows for blob in row]
    gone += c.execute("SELECT name FROM persons WHERE person_id = 'forget-me-7f3a'").fetchone()
    (kept,) = c.execute("SELECT embedding FROM templates WHERE person_id = 'keep-me'").fetchone()
    c.close()
    before = _on_disk(db)
    assert all(any(w in before for w in _windows(b)) for b in gone)  # the test can see them

    state = store.delete("forget-me-7f3a")

    after = _on_disk(db)
    assert not [w for b in gone for w in _windows(b) if w in after]
    assert b"forget-me-7f3a" not in after
    assert kept in after
    assert (state.persons, state.templates) == (1, 1)
    with pytest.raises(StoreError, match="no person 'forget-me-7f3a'"):
        store.get("forget-me-7f3a")


def test_delete_of_an_unknown_person_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="no person 'nobody'"):
        store.delete("nobody")


# -- input checks ------------------------------------------------------------------------------


def _bad_inputs() -> dict[str, tuple[str, str | None, object, str]]:
    rng = np.random.default_rng(6)
    good = _template(rng)

    def t(**kw: object) -> Template:
        fields = {"embedding": good.embedding, "model_id": "sface", "crop_jpeg": None}
        fields.update(kw)
        return Template(**fields)  # type: ignore[arg-type]

    nan = good.embedding.copy()
    nan[3] = np.nan
    return {
        "empty id": ("", None, [good], "person id '' is invalid"),
        "slash in id": ("a/b", None, [good], "person id 'a/b' is invalid"),
        "long id": ("x" * 65, None, [good], "is invalid"),
        "no templates": ("p", None, [], "at least one template"),
        "not a template": ("p", None, [good.embedding], "expected a Template, got ndarray"),
        "nan": ("p", None, [t(embedding=nan)], "NaN or infinity"),
        "not unit": ("p", None, [t(embedding=good.embedding * 3)], "norm is 3"),
        "matrix": ("p", None, [t(embedding=np.stack([good.embedding] * 2))], "one vector"),
        "text vector": ("p", None, [t(embedding=np.array(["a", "b"]))], "must hold numbers"),
        "other dims": ("p", None, [t(embedding=_unit(rng, 32))], "have 64 dimensions"),
        "bad model id": ("p", None, [t(model_id="s face")], "model id 's face' is invalid"),
        "not jpeg": ("p", None, [t(crop_jpeg=b"PNG...")], "crop_jpeg must be JPEG bytes"),
        "flag not bool": ("p", None, [t(masked="yes")], "masked must be True or False"),
        "control in name": ("p", "a\nb", [good], "control characters"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_invalid_input_is_refused_and_changes_nothing(store: Store, case: str) -> None:
    store.enroll("existing", None, [_template(np.random.default_rng(7))])
    before = store.state()
    pid, name, templates, message = _bad_inputs()[case]
    with pytest.raises(StoreError, match=message):
        store.enroll(pid, name, templates)  # type: ignore[arg-type]
    assert store.state() == before


def test_replace_all_is_all_or_nothing(store: Store) -> None:
    _fill(store, _people())
    before, listing = store.state(), store.list()
    rng = np.random.default_rng(8)
    batch = [
        ("new1", None, [_template(rng)]),
        ("new2", None, [_template(rng)]),
        ("bad id!", None, [_template(rng)]),
    ]
    with pytest.raises(StoreError, match="person id 'bad id!'"):
        store.replace_all(batch)
    dup = [("new1", None, [_template(rng)]), ("new1", None, [_template(rng)])]
    with pytest.raises(StoreError, match="'new1' appears twice"):
        store.replace_all(dup)
    assert store.state() == before and store.list() == listing

    created = store.get("alice").created
    state = store.replace_all([("alice", "A", [_template(rng)]), ("dan", None, [_template(rng)])])
    assert [p.person_id for p in store.list()] == ["alice", "dan"]
    assert store.get("alice").created == created  # still the same person
    assert (state.persons, state.templates, state.version) == (2, 2, before.version + 1)


# -- galleries, re-embedding, crops ------------------------------------------------------------


def test_gallery_holds_one_model_as_float32(store: Store) -> None:
    people = _people()
    _fill(store, people)
    g = store.gallery("sface")
    assert sorted(set(g.labels)) == ["alice", "bob.2"] and len(g) == 4
    assert g.dim == DIM and g.scores(people[1][2][1].embedding).dtype == np.float32
    assert g.search(people[1][2][1].embedding).label == "bob.2"
    assert len(store.gallery("sface", masked=True)) == 2
    assert len(store.gallery("arcface")) == 1
    assert len(store.gallery("unknown")) == 0


def _toy_embedder(dim: int, seen: list[tuple[int, ...]]):
    proj = np.random.default_rng(99).normal(size=(112 * 112 * 3 // 64, dim)).astype(np.float32)

    def embed(image: np.ndarray) -> np.ndarray:
        seen.append(image.shape)
        v = image.astype(np.float32).reshape(-1, 64).mean(axis=1) @ proj
        return v / np.linalg.norm(v)

    return embed


def test_reembed_makes_new_templates_from_the_crops(store: Store) -> None:
    rng = np.random.default_rng(10)
    shared = _template(rng, masked=True, synthetic=True, source="variant:n95")
    twin = Template(_unit(rng, 32), "arcface", True, True, "variant:n95", shared.crop_jpeg)
    store.enroll("alice", "Alice", [shared, twin, _template(rng)])  # two models, one crop
    store.enroll("bob", None, [_template(rng, crop=False, source="server")])
    version = store.state().version
    seen: list[tuple[int, ...]] = []

    added = store.reembed("newnet", _toy_embedder(16, seen))

    assert added == 2 and seen == [(112, 112, 3)] * 2  # bob has no crop: nothing to re-embed
    assert store.state().version == version + 1
    new = [t for t in store.templates("alice") if t.model_id == "newnet"]
    assert [(t.masked, t.synthetic, t.source) for t in new] == [
        (True, True, "variant:n95"),
        (False, False, "photo"),
    ]
    assert new[0].crop_jpeg == shared.crop_jpeg
    assert store.gallery("newnet").labels == ["alice", "alice"]
    assert store.reembed("newnet", _toy_embedder(16, seen)) == 0  # done once is done
    state = store.delete_model("sface")
    assert state.model_ids == ["arcface", "newnet"] and store.get("bob").templates == 0


def test_keep_crops_off_stores_no_crops_and_purges_old_ones(db: Path, key: bytes) -> None:
    with Store(db, key) as s:
        _fill(s, _people())
    with Store(db, key, keep_crops=False) as s:
        assert all(t.crop_jpeg is None for p in s.list() for t in s.templates(p.person_id))
        s.enroll("zed", None, [_template(np.random.default_rng(11))])
        assert s.templates("zed")[0].crop_jpeg is None
        assert s.integrity_check() == "ok"
    c = _raw(db)
    assert c.execute("SELECT count(*) FROM templates WHERE crop IS NOT NULL").fetchone() == (0,)
    c.close()


# -- the file ----------------------------------------------------------------------------------


def test_file_settings_and_schema(store: Store, db: Path) -> None:
    _fill(store, _people())
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    c = _raw(db)
    assert c.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (1,)
    assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    c.close()
    assert store.integrity_check() == "ok"


def test_a_newer_schema_is_refused(db: Path, key: bytes) -> None:
    Store(db, key).close()
    c = _raw(db)
    c.execute("PRAGMA user_version = 2")
    c.close()
    with pytest.raises(StoreError, match="schema version 2 is newer than this MaskGate knows"):
        Store(db, key)


def test_other_files_are_refused(tmp_path: Path, key: bytes) -> None:
    other = tmp_path / "other.db"
    c = _raw(other)
    c.execute("CREATE TABLE songs (title TEXT)")
    c.close()
    with pytest.raises(StoreError, match=r"not a MaskGate template store.*songs"):
        Store(other, key)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a MaskGate template store"):
        Store(garbage, key)


def test_a_closed_store_says_so(db: Path, key: bytes) -> None:
    s = Store(db, key)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.state()


# -- concurrency -------------------------------------------------------------------------------


def test_readers_run_beside_a_writer(store: Store) -> None:
    rng = np.random.default_rng(12)
    batches = [[_template(rng, crop=False) for _ in range(3)] for _ in range(40)]
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                # Whatever moment a reader lands on, it sees whole enrollments only.
                counts = Counter(store.gallery("sface").labels)
                assert set(counts.values()) <= {3}
                assert all(p.templates == 3 for p in store.list())
                assert store.state().templates % 3 == 0
        except BaseException as err:
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i, batch in enumerate(batches):
            store.enroll(f"p{i}", None, batch)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert not errors, errors[0]
    assert (store.state().persons, len(store.gallery("sface"))) == (40, 120)


def test_a_change_by_another_process_is_seen(db: Path, key: bytes) -> None:
    rng = np.random.default_rng(13)
    with Store(db, key) as door, Store(db, key) as cli:
        door.enroll("alice", None, [_template(rng)])
        state = cli.enroll("bob", None, [_template(rng)])
        assert door.state() == state
        assert sorted(set(door.gallery("sface").labels)) == ["alice", "bob"]
        door.delete("bob")
        assert [p.person_id for p in cli.list()] == ["alice"]


def test_a_reader_keeps_up_with_a_writer_in_another_connection(db: Path, key: bytes) -> None:
    rng = np.random.default_rng(14)
    batches = [[_template(rng, crop=False) for _ in range(2)] for _ in range(30)]
    with Store(db, key) as door, Store(db, key) as cli:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i, batch in enumerate(batches):
                    cli.enroll(f"p{i}", None, batch)
            except BaseException as err:
                errors.append(err)

        writer = threading.Thread(target=write)
        writer.start()
        while writer.is_alive():  # every reload verifies one snapshot against its seal
            assert door.state().templates % 2 == 0
        writer.join()
        assert not errors, errors[0]
        assert door.state() == cli.state()


# -- crash safety ------------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """Bytes from the child's stdout up to and including `marker`; fails on exit or timeout."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the writer said nothing within {timeout} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the writer exited before {marker!r}:\n{stderr}")
            got += chunk
    return got


def _outcomes(out: bytes) -> tuple[dict[str, set[tuple[int, int] | None]], int, bool]:
    """Per person, the states the store may hold after this run; number of ACKs; cut mid-write.

    An acknowledged batch must be there; the one batch begun but not acknowledged may be there
    or not, but never in part. A line cut by the kill was never received.
    """
    acked: dict[str, tuple[int, int]] = {}
    inflight: tuple[str, int, int] | None = None
    acks = 0
    for line in out.split(b"\n")[:-1]:
        words = line.decode().split()
        if words[0] not in ("BEGIN", "ACK"):
            continue
        pid, n, gen = words[1], int(words[2]), int(words[3])
        if words[0] == "BEGIN":
            inflight = (pid, n, gen)
        else:
            assert inflight == (pid, n, gen)
            acked[pid], inflight, acks = (n, gen), None, acks + 1
    allowed: dict[str, set[tuple[int, int] | None]] = {p: {v} for p, v in acked.items()}
    if inflight is not None:
        pid, n, gen = inflight
        allowed.setdefault(pid, {None}).add((n, gen))
    return allowed, acks, inflight is not None


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    db, key_file = tmp_path / "state" / "templates.db", tmp_path / "state" / "template.key"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    rng = random.Random(20240611)  # fixed delays: the same kill schedule on every run
    allowed: dict[str, set[tuple[int, int] | None]] = {}
    total_acks = cut_mid_write = 0
    for run in range(30):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), str(key_file), str(run), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
        head = b""
        if run % 6 == 5:  # now and then while it is still opening (or creating) the store
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            head = _read_until(proc, b"READY\n", timeout=30)
            time.sleep(rng.uniform(0.0, 0.2))
        proc.kill()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -9, f"writer run {run} ended by itself:\n{err.decode()}"
        run_allowed, acks, cut = _outcomes(head + out)
        allowed.update(run_allowed)
        total_acks += acks
        cut_mid_write += cut

    with Store(db, load_key(key_file, None, create=False)) as s:
        assert s.integrity_check() == "ok"
        present = {p.person_id for p in s.list()}
        for pid, options in allowed.items():
            if pid not in present:
                assert None in options, f"acknowledged {pid} is lost"
                continue
            sources = {t.source for t in s.templates(pid)}
            assert len(sources) == 1, f"{pid} mixes batches {sources}"
            gen = int(sources.pop().split("#")[1])
            assert (s.get(pid).templates, gen) in options, f"{pid} holds a partial batch"
        assert present <= set(allowed), f"unexpected persons {present - set(allowed)}"
    assert total_acks >= 25 and cut_mid_write >= 5  # it really wrote, and was cut mid-write
