"""Provisioning transforms: the PRelu rewrite keeps every output, on a small graph and on the
shipped SFace (against its embedding from before the rewrite); the INT8 quantization stays
close to the float graph, gives the same bytes each time and is fused by ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.config import RuntimeConfig
from edge.imageio import read_image
from edge.manifest import load_manifest
from edge.pipeline import Pipeline
from edge.vision.embed import Embedder
from models import calibrate_int8
from models.int8_pointwise import fold_batchnorm, load_calibration, quantize
from models.prelu_as_relu import rewrite

GOLDEN = Path(__file__).resolve().parent / "golden"


def _prelu_graph(rng: np.random.Generator) -> bytes:
    """Conv -> PRelu (per-channel slopes) -> PRelu (one slope), as SFace's blocks are built;
    slopes below 0 and above 1 as well, as SFace has (-0.81 to 1.12)."""
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    slopes = np.array([-0.8, 0.1, 0.5, 1.1], np.float32).reshape(4, 1, 1)
    s1 = numpy_helper.from_array(slopes, "s1")
    s2 = numpy_helper.from_array(np.array([0.25], np.float32), "s2")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c", "s1"], ["p1"], name="p1"),
        helper.make_node("PRelu", ["p1", "s2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, s1, s2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_the_rewrite_keeps_the_outputs_and_removes_every_prelu() -> None:
    rng = np.random.default_rng(0)
    model = _prelu_graph(rng)
    new = rewrite(model)
    ops = [n.op_type for n in onnx.load_from_string(new).graph.node]
    assert "PRelu" not in ops and ops.count("Relu") == 2 and ops.count("Add") == 2
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)  # half the values negative
    before, after = _run(model, x), _run(new, x)
    assert (before < 0).mean() > 0.2  # the negative side is exercised
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert rewrite(model) == new  # deterministic: its sha256 can be pinned


def test_a_prelu_whose_slope_is_computed_is_refused_by_name() -> None:
    rng = np.random.default_rng(0)
    model = onnx.load_from_string(_prelu_graph(rng))
    model.graph.node[1].input[1] = "c"  # the slope is now another node's output
    with pytest.raises(ValueError, match="PRelu 'p1': its slope 'c' is not a constant"):
        rewrite(model.SerializeToString())


def _float_embedder(pipeline: Pipeline, model_id: str) -> Embedder:
    manifest = load_manifest(pipeline.cfg.resolve(pipeline.cfg.models.manifest))
    return Embedder(manifest, manifest.get(model_id, "embedder"), RuntimeConfig(providers=["cpu"]))


def test_the_shipped_sface_matches_its_embedding_from_before_the_rewrite(
    pipeline: Pipeline,
) -> None:
    golden = json.loads((GOLDEN / "sface_impostor_1.json").read_text())
    crop = read_image(GOLDEN / golden["crop"])  # the golden aligned crop of test_align
    sface = _float_embedder(pipeline, "sface")
    (vector,) = sface.embed([crop])  # unit length
    assert float(vector @ np.asarray(golden["embedding"])) == pytest.approx(1.0, abs=1e-6)
    manifest = load_manifest(pipeline.cfg.resolve(pipeline.cfg.models.manifest))
    for model_id in ("sface", "sface_int8"):
        shipped = manifest.path(manifest.get(model_id, "embedder"))
        assert "PRelu" not in {n.op_type for n in onnx.load(str(shipped)).graph.node}


def _conv_bn_graph(rng: np.random.Generator) -> bytes:
    """Conv 3×3 -> BatchNorm -> Relu -> Conv 1×1 (+bias) -> BatchNorm -> Relu -> Conv 1×1 ->
    Relu: SFace's pattern in small, with two pointwise layers to quantize."""
    c = 8

    def const(name: str, *shape: int, low: float = -1.0, high: float = 1.0) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    inits = [const("w0", c, 3, 3, 3), const("w1", c, c, 1, 1), const("b1", c),
             const("w2", c, c, 1, 1)]  # fmt: skip
    for bn in ("bn0", "bn1"):
        inits += [const(f"{bn}_g", c, low=0.5, high=2), const(f"{bn}_b", c),
                  const(f"{bn}_m", c), const(f"{bn}_v", c, low=0.5, high=2)]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "bn0_g", "bn0_b", "bn0_m", "bn0_v"], ["n0"]),
        helper.make_node("Relu", ["n0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="c1"),
        helper.make_node("BatchNormalization", ["c1", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2"),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_batchnorm_folding_keeps_the_outputs() -> None:
    rng = np.random.default_rng(1)
    model_bytes = _conv_bn_graph(rng)
    model = onnx.load_from_string(model_bytes)
    assert fold_batchnorm(model) == 2
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    x = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(
        _run(model.SerializeToString(), x), _run(model_bytes, x), rtol=1e-5, atol=1e-5
    )


def test_int8_from_recorded_ranges_is_close_deterministic_and_fused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    model = _conv_bn_graph(rng)
    crops = [rng.normal(size=(1, 3, 6, 6)).astype(np.float32) for _ in range(16)]
    record = calibrate_int8.measure(model, crops, max_side=6, percentile=100.0)
    assert record["nodes"] == ["c1", "c2"]  # the 1×1 convolutions; the 3×3 one stays float
    quantized = quantize(model, record)
    assert quantize(model, json.loads(json.dumps(record))) == quantized  # same bytes: pinnable
    ops = [n.op_type for n in onnx.load_from_string(quantized).graph.node]
    assert ops.count("QuantizeLinear") == 4  # each quantized node's input and output
    x = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    want, got = _run(model, x), _run(quantized, x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert not np.array_equal(got, want)  # it is quantized
    # ONNX Runtime turns the pattern into integer convolutions (else it would only be slower).
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(quantized, so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 2 and "Conv" in fused  # the float 3×3 one


def test_a_calibration_that_names_a_missing_node_is_refused() -> None:
    rng = np.random.default_rng(3)
    model = _conv_bn_graph(rng)
    record = calibrate_int8.measure(model, [rng.normal(size=(1, 3, 6, 6)).astype(np.float32)],
                                    max_side=6, percentile=100.0)  # fmt: skip
    with pytest.raises(ValueError, match=r"nodes the graph lacks: \['c9'\]"):
        quantize(model, {**record, "nodes": ["c1", "c9"]})
    with pytest.raises(ValueError, match="calibration format 2"):
        quantize(model, {**record, "format": 2})


def test_the_shipped_int8_embedder_stays_close_to_the_float_one(pipeline: Pipeline) -> None:
    """The default embedder is the INT8 graph; on the golden crop it must stay near sface."""
    assert pipeline.model_id == "sface_int8"
    golden = json.loads((GOLDEN / "sface_impostor_1.json").read_text())
    crop = read_image(GOLDEN / golden["crop"])
    (vector,) = pipeline.embedder.embed([crop])
    cosine = float(vector @ np.asarray(golden["embedding"]))
    assert 0.98 < cosine < 0.99999  # close, and not the float graph itself
    assert load_calibration("sface_int8")["nodes"][-1] == "pre_fc1"


def test_the_recorded_calibration_is_what_the_pipeline_measures_now() -> None:
    """models/calibration/sface_int8.json was measured by this pipeline on the registry photos:
    a change to alignment or the float graph that moves the ranges shows up here."""
    assert calibrate_int8.main(["--check"]) == 0
