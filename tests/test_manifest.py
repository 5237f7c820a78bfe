"""models/manifest.yaml: the shipped manifest, sha256 pinning, and clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.manifest import ManifestError, load_manifest, sha256_file, verify

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "models" / "manifest.yaml"
ROLES = {"landmarks", "detector", "embedder", "mask_classifier"}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(MANIFEST)


def test_shipped_manifest_loads(manifest) -> None:
    assert manifest.root == MANIFEST.parent
    assert {e.role for e in manifest.models.values()} == ROLES
    for model_id, entry in manifest.models.items():
        assert entry.id == model_id
        assert entry.origin.package and entry.origin.version and entry.licence


def test_every_shipped_model_verifies(manifest) -> None:
    for entry in manifest.models.values():
        path = verify(manifest, entry)
        assert path == MANIFEST.parent / entry.file
        assert sha256_file(path) == entry.sha256


def test_configured_models_are_in_the_manifest(manifest) -> None:
    from edge.config import load_config

    m = load_config().models
    wanted = {
        m.landmarker: "landmarks",
        m.embedder: "embedder",
        m.mask_classifier: "mask_classifier",
    }
    if m.detector:
        wanted[m.detector] = "detector"
    for model_id, role in wanted.items():
        assert manifest.get(model_id, role).role == role


def _copy_manifest(tmp_path: Path, copy_ids: tuple[str, ...]) -> Path:
    """The shipped manifest in tmp_path, with copies of only the named models' files."""
    (tmp_path / "manifest.yaml").write_text(MANIFEST.read_text(encoding="utf-8"), encoding="utf-8")
    shipped = load_manifest(MANIFEST)
    for model_id in copy_ids:
        entry = shipped.get(model_id)
        dst = tmp_path / entry.file
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped.path(entry), dst)
    return tmp_path / "manifest.yaml"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    # YuNet is the smallest model file (~240 kB): cheap to copy and flip a byte in.
    m = load_manifest(_copy_manifest(tmp_path, ("yunet",)))
    entry = m.get("yunet")
    path = m.path(entry)
    verify(m, entry)  # the untouched copy is fine
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as err:
        verify(m, entry)
    msg = str(err.value)
    assert "'yunet'" in msg and "sha256" in msg
    assert entry.sha256 in msg and sha256_file(path) in msg


def test_missing_file_says_to_run_install(tmp_path: Path) -> None:
    m = load_manifest(_copy_manifest(tmp_path, ()))
    entry = m.get("sface")
    with pytest.raises(ManifestError) as err:
        verify(m, entry)
    msg = str(err.value)
    assert "'sface'" in msg and "missing" in msg and "./install.sh" in msg
    assert str(m.path(entry)) in msg


def test_unknown_model_id_lists_the_known_ones(manifest) -> None:
    with pytest.raises(ManifestError) as err:
        manifest.get("arcface_r100")
    msg = str(err.value)
    assert "'arcface_r100'" in msg and "not in the manifest" in msg
    for known in manifest.models:
        assert known in msg


def test_wrong_role_is_refused(manifest) -> None:
    with pytest.raises(ManifestError, match=r"'sface' is a embedder model, not a detector model"):
        manifest.get("sface", "detector")


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read model manifest") as err:
        load_manifest(tmp_path / "manifest.yaml")
    assert "manifest.yaml" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: [\n", "not valid YAML"),
        ("- a\n", "expected a mapping with a 'models' mapping"),
        ("version: 1\n", "expected a mapping with a 'models' mapping"),
        ("models:\n  x:\n    role: embedder\n", "models.x.file: Field required"),
        ("models:\n  x:\n    role: painter\n", "models.x.role"),
    ],
    ids=["bad-yaml", "list", "no-models", "incomplete-entry", "bad-role"],
)
def test_invalid_manifest(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "manifest.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        load_manifest(f)
    assert fragment in str(err.value) and str(f) in str(err.value)


def test_bad_sha256_in_manifest_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    raw["models"]["sface"]["sha256"] = "not-a-digest"
    f = tmp_path / "manifest.yaml"
    f.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"models\.sface\.sha256"):
        load_manifest(f)


def test_model_entry_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "manifest.yaml"
    f.write_text("models:\n  sface: 3\n", encoding="utf-8")
    with pytest.raises(ManifestError):
        load_manifest(f)


def test_provision_check_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "models.provision", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for model_id in load_manifest(MANIFEST).models:
        assert model_id in proc.stdout


def test_provision_check_fails_on_a_tampered_copy(tmp_path: Path) -> None:
    manifest_path = _copy_manifest(tmp_path, ("yunet",))
    f = tmp_path / load_manifest(manifest_path).get("yunet").file
    f.write_bytes(f.read_bytes()[:-1])
    proc = subprocess.run(
        [sys.executable, "-m", "models.provision", "--check", "--manifest", str(manifest_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "yunet" in proc.stderr and "FAILED" in proc.stderr
