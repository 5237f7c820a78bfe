"""Check the torch-free ONNX conversion of the mask classifier against torch itself.

`models/mask_onnx.py` builds the ONNX model from the wheel's weights without torch (that is
what install.sh runs on every device). This tool is its reference: it declares the same
network in plain torch, loads the weights strictly, and compares log-probabilities with the
converted model on random and real images; with `--out` it writes the checked file.

Source weights: ``model/model.pth`` from the PyPI wheel ``mask_recognition==0.0.1``
(MIT licence). It is a state_dict for a torchvision MobileNetV2 ``.features`` trunk
(``bottom.*``) followed by ``Linear(1280*4*4, 256) -> ReLU -> Linear(256, 2) ->
LogSoftmax`` (``top.*``). The network is re-declared here in plain ``torch.nn`` so
torchvision is not needed; ``load_state_dict(strict=True)`` proves the layout matches.

Model contract (what the exported file expects and returns):
    input      ``input``: float32 [N, 3, 128, 128], RGB, ``(pixel / 255 - 0.5) / 0.5``
    output     ``log_probs``: float32 [N, 2], log-softmax; 0 = with_mask, 1 = without_mask

Usage:
    python models/convert_mask_classifier.py --weights model.pth [--check-images DIR] \\
        [--out models/artefacts/mask_mobilenetv2.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from models.mask_onnx import OPSET, convert

logger = logging.getLogger(__name__)

INPUT_SIZE = 128
INPUT_NAME = "input"
OUTPUT_NAME = "log_probs"
PARITY_TOL = 1e-4
SEED = 0
N_RANDOM = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# MobileNetV2 inverted-residual settings (expand ratio t, out channels c, repeats n,
# first stride s), as in the paper and torchvision; width multiplier 1.0.
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU6; child indices 0/1/2 match torchvision keys."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; the ``conv`` Sequential mirrors torchvision's state_dict layout."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        # Expand ratio 1 has no 1x1 expansion, which shifts every later index by one.
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),  # linear bottleneck
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    """torchvision ``mobilenet_v2().features`` (indices 0..18), without torchvision."""
    layers: list[nn.Module] = [conv_bn_relu6(3, 32, stride=2)]
    in_ch = 32
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
            in_ch = c
    layers.append(conv_bn_relu6(in_ch, 1280, kernel=1))
    return nn.Sequential(*layers)


class MaskClassifier(nn.Module):
    """MobileNetV2 trunk + MLP head; 128x128 input gives a 1280x4x4 feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.bottom = mobilenet_v2_features()
        self.top = nn.Sequential(
            nn.Linear(1280 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, 2),
            nn.LogSoftmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW flatten, as the original's view(N, -1); exports as a single Flatten op.
        return self.top(torch.flatten(self.bottom(x), 1))


def load_model(weights: Path | bytes) -> MaskClassifier:
    """Build the network and load the weights (a file or its bytes) strictly, in eval mode."""
    model = MaskClassifier()
    source = io.BytesIO(weights) if isinstance(weights, bytes) else weights
    # weights_only: the file is untrusted third-party data, so never unpickle code.
    state = torch.load(source, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    # Eval mode: BatchNorm uses running stats (models/mask_onnx.py folds them into the convs).
    return model.eval()


def preprocess(bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
    """BGR uint8 HxWx3 -> normalised RGB float32 3x128x128 (the model's training transform)."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # INTER_AREA: the daemon's choice for downscaling face crops; avoids aliasing.
    rgb = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    x = (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_images(root: Path) -> NDArray[np.float32]:
    """Every .jpg/.jpeg/.png under ``root`` (sorted, recursive) as one NCHW batch."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no .jpg/.png images found under {root}")
    batch = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read image {p}")
        batch.append(preprocess(img))
    return np.stack(batch)


def max_abs_diff(model: nn.Module, session: ort.InferenceSession, x: NDArray[np.float32]) -> float:
    """Largest |torch - onnxruntime| over all log-probs of batch ``x``."""
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    if got.shape != (x.shape[0], 2):
        raise SystemExit(f"ONNX output shape {got.shape}, expected {(x.shape[0], 2)}")
    return float(np.max(np.abs(ref - got)))


def check_parity(
    model: nn.Module, onnx_bytes: bytes, images: NDArray[np.float32] | None
) -> dict[str, float]:
    """Compare torch and onnxruntime (CPU) on random and, if given, real inputs."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    # Random inputs span the full normalised range; batch 1 and N exercise the dynamic axis.
    rand = rng.uniform(-1.0, 1.0, (N_RANDOM, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    results = {
        "random_batch1": max_abs_diff(model, session, rand[:1]),
        f"random_batch{N_RANDOM}": max_abs_diff(model, session, rand),
    }
    if images is not None:
        results[f"images_batch{len(images)}"] = max_abs_diff(model, session, images)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check the torch-free ONNX conversion of the mask classifier against "
        "torch (and write it with --out).",
    )
    parser.add_argument("--weights", type=Path, required=True, help="source model.pth state_dict")
    parser.add_argument("--out", type=Path, default=None, help="write the checked .onnx here")
    parser.add_argument(
        "--check-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="also check parity on every .jpg/.png under DIR",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    torch.manual_seed(SEED)  # nothing here is random in torch, but keep runs reproducible

    model = load_model(args.weights)
    logger.info("loaded %s (strict)", args.weights)
    onnx_bytes = convert(args.weights.read_bytes())
    logger.info("converted without torch: opset %d, onnx.checker passed", OPSET)

    images = load_images(args.check_images) if args.check_images else None
    parity = check_parity(model, onnx_bytes, images)
    for name, diff in parity.items():
        logger.info("parity %-18s max|torch-ort| = %.3e", name, diff)
    worst = max(parity.values())
    if not worst < PARITY_TOL:  # written this way so a NaN diff also fails
        logger.error("parity FAILED: max abs diff %.3e >= %.0e", worst, PARITY_TOL)
        return 1
    logger.info("sha256 of the conversion: %s", hashlib.sha256(onnx_bytes).hexdigest())
    if args.out is None:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(onnx_bytes)
    written = args.out.read_bytes()  # hash what is on disk, not what we meant to write
    digest = hashlib.sha256(written).hexdigest()
    logger.info("wrote %s (%d bytes) sha256=%s", args.out, len(written), digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
