"""iresnet face embedders (Deng et al., "ArcFace", CVPR 2019, the "improved ResNet"), by name.

Shape of the network, for a 112×112 RGB face:

    stem    conv3×3 (stride 1) → BN → PReLU                              64 × 112 × 112
    stages  4 stages of IBasicBlock, each starting with stride 2           → 512 × 7 × 7
    head    BN → dropout → flatten → FC(C·7·7 → 512) → BN                  → 512

IBasicBlock is the pre-activation-like block of that paper: BN → conv3×3 → BN → PReLU →
conv3×3 (carries the stride) → BN, plus a conv1×1+BN shortcut where the shape changes.

Measured with `count_macs` / `count_params` (112×112 input, 512-d output):

    name   blocks          widths               params    multiply-adds
    r18    [2, 2, 2, 2]    64, 128, 256, 512    24.0 M     2.61 G
    r34    [3, 4, 6, 3]    64, 128, 256, 512    34.1 M     4.46 G
    r50    [3, 4, 14, 3]   64, 128, 256, 512    43.6 M     6.31 G
    r100   [3, 13, 30, 3]  64, 128, 256, 512    65.2 M    12.09 G
    edge   [1, 2, 2, 1]    32, 64, 128, 256      8.0 M     0.55 G

"edge" keeps the iresnet family (same block, same head, same 7×7 grid) at half the width and a
half the depth of r18, for a Raspberry Pi or a Jetson Nano: 4.8× fewer multiply-adds than r18
(a fifth of them in the first block, which still works on the full 112×112 grid).
Most of its parameters are the head's FC (256·7·7 → 512 = 6.4 M), which costs almost no time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_SIZE = 112
# Spatial size after the 4 stride-2 stages: 112 / 16.
_GRID = INPUT_SIZE // 16

# name → (blocks per stage, channel widths per stage)
ARCHS: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {
    "r18": ((2, 2, 2, 2), (64, 128, 256, 512)),
    "r34": ((3, 4, 6, 3), (64, 128, 256, 512)),
    "r50": ((3, 4, 14, 3), (64, 128, 256, 512)),
    "r100": ((3, 13, 30, 3), (64, 128, 256, 512)),
    "edge": ((1, 2, 2, 1), (32, 64, 128, 256)),
}
BN_EPS = 1e-5


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3(stride) → BN, added to the (projected) input."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.conv1 = _conv3x3(c_in, c_out)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = _conv3x3(c_out, c_out, stride)
        self.bn3 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.shortcut is None else self.shortcut(x))


class IResNet(nn.Module):
    """An iresnet of `blocks` IBasicBlocks per stage, returning `embedding_size`-d features.

    The features are not L2-normalised here: the margin head and the daemon normalise them.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4:
            raise ValueError("iresnet has 4 stages: give 4 block counts and 4 widths")
        if any(b < 1 for b in blocks) or any(w < 1 for w in widths):
            raise ValueError(f"block counts and widths must be positive: {blocks}, {widths}")
        self.embedding_size = embedding_size
        stem_width = widths[0]
        self.stem = nn.Sequential(
            _conv3x3(3, stem_width),
            nn.BatchNorm2d(stem_width, eps=BN_EPS),
            nn.PReLU(stem_width),
        )
        stages: list[nn.Module] = []
        c_in = stem_width
        for n, width in zip(blocks, widths, strict=True):
            # Each stage halves the grid in its first block: 112 → 56 → 28 → 14 → 7.
            layers = [IBasicBlock(c_in, width, stride=2)]
            layers += [IBasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c_in * _GRID * _GRID, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        # A fixed scale on the last BN: the embedding's direction is what is learnt, and a
        # learnable gain here only lets the norm drift (the reference models freeze it too).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init for the PReLU slope it starts with (0.25).
                nn.init.kaiming_normal_(m.weight, a=0.25, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        if zero_init_residual:
            # Each block starts as the identity: deep nets (r100) train from step one.
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn3.weight, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.dropout(self.bn(x)), 1)
        # The FC and the last BN run in float32 even under autocast: a 25k-wide dot product
        # in float16 loses the small differences between faces.
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype != torch.float32:  # a no-op cast would survive into the ONNX graph
                x = x.float()
            return self.features(self.fc(x))


def get_model(
    name: str,
    embedding_size: int = 512,
    dropout: float = 0.0,
    widths: Sequence[int] | None = None,
    blocks: Sequence[int] | None = None,
) -> IResNet:
    """An iresnet by name ("r18", "r34", "r50", "r100", "edge").

    `widths` / `blocks` override the named shape (tests use a very narrow net).
    """
    try:
        arch_blocks, arch_widths = ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(ARCHS)}") from None
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return IResNet(
        blocks or arch_blocks, widths or arch_widths, embedding_size=embedding_size, dropout=dropout
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = INPUT_SIZE) -> int:
    """Multiply-adds of one forward pass on a size×size image (convolutions and FCs)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out[0].numel() * k

    def fc_hook(m: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(fc_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total
