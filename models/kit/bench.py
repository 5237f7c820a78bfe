"""FP32 vs INT8 on the CPU: batch-1 latency on 2 threads and cosine to FP32, per backbone.

    python -m models.export bench --arch r18 r50 --crops ../shared/data/lfw-subset

Without `--checkpoint` the backbones have random weights. A freshly initialised iresnet is a
poor stand-in as it is: each residual branch starts at zero (zero-init of its last BN) and
every BN holds unit statistics, so the INT8 ranges would be unrealistically tame. The bench
therefore gives each BN random statistics and scales first (seeded), which exercises every
branch the way trained weights do. Trained weights, where there are any, are the better test.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.kit.backbones import IResNet, count_macs, get_model
from models.kit.export import export_onnx
from models.kit.quantize import QuantOptions, compare, quantize_int8, split_crops

log = logging.getLogger(__name__)

# The option grid of `--sweep`: one change from the default at a time.
SWEEP = (
    QuantOptions(),
    QuantOptions(quant_format="qoperator"),
    QuantOptions(per_channel=False),
    QuantOptions(reduce_range=True),
    QuantOptions(activation="s8"),
    QuantOptions(calibration="percentile"),
    QuantOptions(moving_average=False),
    QuantOptions(ops="conv"),
    QuantOptions(preprocess=False),
)


@torch.no_grad()
def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN scales, shifts and running statistics (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            if m.weight.requires_grad:
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def bench_model(
    name: str,
    model: IResNet,
    crops: np.ndarray,
    workdir: Path,
    options: tuple[QuantOptions, ...] = (QuantOptions(),),
    calib: int = 64,
    threads: int = 2,
    runs: int = 30,
    levels: tuple[str, ...] = ("all",),
) -> list[dict[str, Any]]:
    """Export once, quantise with each option set, and time/compare at each session level."""
    fp32 = export_onnx(model, workdir / f"{name}.onnx")
    calib_crops, eval_crops = split_crops(crops, calib)
    macs = count_macs(model)
    rows = []
    for i, opt in enumerate(options):
        int8 = quantize_int8(fp32, workdir / f"{name}.int8.{i}.onnx", calib_crops, opt)
        for level in levels:
            r = compare(fp32, int8, eval_crops, opt, threads, runs, level)
            row = {"model": name, "gmacs": macs / 1e9, "level": level, **r.as_dict()}
            rows.append(row)
            log.info(
                "%s %s [%s]: fp32 %.1f ms, int8 %.1f ms (%.2f×), cosine mean %.4f p1 %.4f",
                name,
                opt.label(),
                level,
                r.fp32_ms,
                r.int8_ms,
                r.speedup,
                r.cosine_mean,
                r.cosine_p1,
            )
    return rows


def run_bench(
    archs: list[str],
    crops: np.ndarray,
    checkpoint: Path | None = None,
    options: tuple[QuantOptions, ...] | None = None,
    levels: tuple[str, ...] = ("all",),
    calib: int = 64,
    threads: int = 2,
    runs: int = 30,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of FP32 vs INT8 results; `options` None runs the whole SWEEP."""
    torch.set_num_threads(threads)
    options = SWEEP if options is None else options
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="maskgate-bench-") as tmp:
        if checkpoint is not None:
            from models.kit.train import load_backbone

            model, ckpt = load_backbone(checkpoint)
            name = f"{ckpt['config']['model']['backbone']}@{checkpoint.name}"
            rows += bench_model(
                name, model, crops, Path(tmp), options, calib, threads, runs, levels
            )
        for arch in archs:
            torch.manual_seed(seed)
            model = randomize_batchnorm(get_model(arch), seed)
            rows += bench_model(
                f"{arch} (random)", model, crops, Path(tmp), options, calib, threads, runs, levels
            )
    return rows


def format_table(rows: list[dict[str, Any]], min_cosine: float = 0.99) -> str:
    """One line per row; `ok` marks INT8 at least 1.4× faster with mean cosine ≥ min_cosine."""
    head = (
        f"{'model':<22} {'GMACs':>6} {'int8 options':<34} {'level':<8} {'fp32 ms':>8} "
        f"{'int8 ms':>8} {'speed-up':>8} {'cos mean':>9} {'cos p1':>8}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = r["speedup"] >= 1.4 and r["cosine_mean"] >= min_cosine
        lines.append(
            f"{r['model']:<22} {r['gmacs']:>6.2f} {r['options']['label']:<34} {r['level']:<8} "
            f"{r['fp32_ms']:>8.1f} {r['int8_ms']:>8.1f} {r['speedup']:>7.2f}× "
            f"{r['cosine_mean']:>9.4f} {r['cosine_p1']:>8.4f}  {'yes' if ok else 'no'}"
        )
    return "\n".join(lines)
