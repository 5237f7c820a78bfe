"""Static INT8 (QDQ) of chosen Conv / Gemm nodes of a float ONNX graph, from recorded ranges.

The ranges of each quantized node's input and output were measured once on calibration crops
(`python -m models.calibrate_int8`, written to models/calibration/<model>.json); applying them
here needs no images and no runtime, only NumPy on the weights, so the result is the same bytes
on every machine and its sha256 can be pinned in the manifest. A calibration run inside
provisioning would not be: the crops come from float models whose last bits differ by CPU.

Each BatchNormalization that follows a Conv is first folded into it, so a quantized node's
output range is the one after the normalisation. Then, for every node named in the ranges file:
activations uint8 (asymmetric, per tensor), weights int8 (symmetric, per output channel, within
±`weight_max`), bias int32 at the input scale × the weight scale: the QuantizeLinear /
DequantizeLinear pattern that ONNX Runtime fuses into QLinearConv and QGemm. Everything not
named stays in float: SFace's early, wide layers (most of its activation volume, little of its
arithmetic) and its PRelu nodes, where the pattern would cost more than it saves (issue 9).

`weight_max` 63 (7-bit weights) because x86 CPUs without VNNI multiply uint8 by int8 with a
16-bit intermediate that can saturate with full 8-bit weights (255 · 127 · 2 > 32767); with
7 bits it cannot (measured here only on AVX-512 VNNI).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"


def fold_batchnorm(model: Any) -> int:
    """Fold every Conv -> BatchNormalization pair (the Conv's output used by the BN alone) into
    the Conv, in place; the Conv takes over the BN's output name. Returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    kept, folded = [], 0
    for node in graph.node:
        conv = producer.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if (
            conv is None
            or conv.op_type != "Conv"
            or uses[node.input[0]] != 1
            or node.input[0] in outputs
            or not all(name in inits for name in node.input[1:5])
            or conv.input[1] not in inits
        ):
            kept.append(node)
            continue
        gamma, beta, mean, var = (
            numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:5]
        )
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        w_name, b_name = f"{conv.name}/bn_weight", f"{conv.name}/bn_bias"
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        graph.initializer.extend(
            [
                numpy_helper.from_array(w.astype(np.float32), w_name),
                numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), b_name),
            ]
        )
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = node.output[0]
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    return folded


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def activation_qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 scale and zero point for a tensor seen within [lo, hi] (the range holds 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        raise ValueError(f"empty calibration range [{lo}, {hi}]")
    scale = np.float32((hi - lo) / 255.0)
    zero = np.uint8(np.clip(np.round(-lo / float(scale)), 0, 255))
    return scale, zero


def quantize(model_bytes: bytes, calibration: dict[str, Any]) -> bytes:
    """The graph with BatchNorms folded and the calibration's nodes in QDQ INT8."""
    import onnx
    from onnx import helper, numpy_helper

    if calibration.get("format") != FORMAT:
        raise ValueError(f"calibration format {calibration.get('format')!r}, expected {FORMAT}")
    weight_max = int(calibration["weight_max"])
    ranges: dict[str, list[float]] = calibration["ranges"]
    model = onnx.load_from_string(model_bytes)
    folded = fold_batchnorm(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    missing = [n for n in calibration["nodes"] if n not in by_name]
    if missing:
        raise ValueError(f"calibration names nodes the graph lacks: {missing}")
    new_inits: list[Any] = []
    before: dict[str, list[Any]] = {}  # node name -> QDQ nodes to insert before / after it
    after: dict[str, list[Any]] = {}
    dequantized: dict[str, tuple[str, np.float32]] = {}  # float tensor -> (its DQ, its scale)

    def qdq(tensor: str, source: str) -> list[Any]:
        """Quantize `source` (holding tensor's values) and note tensor's dequantized name."""
        if tensor not in ranges:
            raise ValueError(f"calibration has no range for tensor {tensor!r}")
        scale, zero = activation_qparams(*ranges[tensor])
        s, z = f"{tensor}/scale", f"{tensor}/zero_point"
        new_inits.extend([numpy_helper.from_array(np.array(scale), s),
                          numpy_helper.from_array(np.array(zero), z)])  # fmt: skip
        q, dq = f"{tensor}/quantized", f"{tensor}/dequantized"
        dequantized[tensor] = (dq, scale)
        return [
            helper.make_node("QuantizeLinear", [source, s, z], [q], name=q),
            helper.make_node("DequantizeLinear", [q, s, z], [dq], name=dq),
        ]

    graph_outputs = {o.name for o in graph.output}
    selected = [by_name[name] for name in calibration["nodes"]]
    quantized_out: dict[str, str] = {}  # a quantized node's output -> its DQ, for its readers
    for node in selected:  # outputs first: a quantized node may feed another directly
        if node.op_type not in ("Conv", "Gemm"):
            raise ValueError(
                f"node {node.name!r} is a {node.op_type}; only Conv and Gemm are quantized"
            )
        (y,) = node.output
        # A Gemm's output (the embedding, before its last BatchNorm) stays float.
        if node.op_type == "Conv" and y not in graph_outputs:
            node.output[0] = f"{y}/float"
            after[node.name] = qdq(y, node.output[0])
            quantized_out[y] = dequantized[y][0]
    for node in selected:
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB") != 1 or attrs.get("transA", 0) != 0:
                raise ValueError(f"Gemm {node.name!r}: only A · Bᵀ is supported")
        x, w_name = node.input[0], node.input[1]
        if w_name not in inits:
            raise ValueError(f"node {node.name!r}: its weight {w_name!r} is not a constant")
        pre = [] if x in dequantized else qdq(x, x)
        x_dq, x_scale = dequantized[x]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        w_scale = (np.where(peak > 0, peak, 1.0) / weight_max).astype(np.float32)
        shape = (-1,) + (1,) * (w.ndim - 1)
        wq = np.clip(np.round(w / w_scale.reshape(shape)), -weight_max, weight_max)
        inputs = [x_dq, _dequantize_constant(pre, new_inits, w_name, wq.astype(np.int8), w_scale)]
        if len(node.input) > 2 and node.input[2]:
            b_name = node.input[2]
            b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
            b_scale = (np.float64(x_scale) * w_scale).astype(np.float32)
            bq = np.clip(np.round(b / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
            inputs.append(_dequantize_constant(pre, new_inits, b_name, bq, b_scale))
        del node.input[:]
        node.input.extend(inputs)
        before[node.name] = pre
    nodes: list[Any] = []
    for node in graph.node:
        nodes += before.get(node.name, [])
        nodes.append(node)
        nodes += after.get(node.name, [])
    for node in nodes:  # every reader of a quantized node's output reads its DQ
        for i, name in enumerate(node.input):
            if name in quantized_out:
                node.input[i] = quantized_out[name]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    onnx.checker.check_model(model)
    log.info("folded %d BatchNorms, quantized %d nodes to INT8", folded, len(calibration["nodes"]))
    return model.SerializeToString()


def _dequantize_constant(
    nodes: list[Any], inits: list[Any], name: str, q: np.ndarray, scale: np.ndarray
) -> str:
    """Add `name` as integers `q` with per-channel `scale` and a DequantizeLinear of them."""
    from onnx import helper, numpy_helper

    inits += [
        numpy_helper.from_array(q, f"{name}/{q.dtype}"),
        numpy_helper.from_array(scale, f"{name}/scale"),
        numpy_helper.from_array(np.zeros(q.shape[0], q.dtype), f"{name}/zero_point"),
    ]
    out = f"{name}/dequantized"
    nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{name}/{q.dtype}", f"{name}/scale", f"{name}/zero_point"],
            [out],
            name=out,
            axis=0,
        )
    )
    return out


def load_calibration(model_id: str) -> dict[str, Any]:
    path = CALIBRATION_DIR / f"{model_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"calibration {path}: {err}") from None
