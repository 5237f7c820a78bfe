"""Provisioning transforms: the PRelu rewrite keeps every output, on a small graph and on the
shipped SFace (against its embedding from before the rewrite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.imageio import read_image
from edge.manifest import load_manifest
from edge.pipeline import Pipeline
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


def test_the_shipped_sface_matches_its_embedding_from_before_the_rewrite(
    pipeline: Pipeline,
) -> None:
    golden = json.loads((GOLDEN / "sface_impostor_1.json").read_text())
    crop = read_image(GOLDEN / golden["crop"])  # the golden aligned crop of test_align
    (vector,) = pipeline.embedder.embed([crop])  # unit length
    assert float(vector @ np.asarray(golden["embedding"])) == pytest.approx(1.0, abs=1e-6)
    cfg = pipeline.cfg
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    shipped = manifest.path(manifest.get(cfg.models.embedder, "embedder"))
    assert "PRelu" not in {n.op_type for n in onnx.load(str(shipped)).graph.node}
