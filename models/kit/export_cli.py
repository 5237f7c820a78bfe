"""`python -m models.export`: ONNX, INT8, TensorRT, benchmark and daemon evaluation commands.

    onnx      checkpoint → ONNX (dynamic batch), parity vs torch, manifest entry (+ --int8)
    int8      ONNX → static INT8 (ONNX Runtime), cosine/latency vs FP32, floor, manifest entry
    tensorrt  ONNX → TensorRT FP16/INT8 engine (a Jetson with JetPack)
    bench     FP32 vs INT8 latency (batch 1, 2 threads) and cosine for r18/r50 or a checkpoint
    evaluate  run the daemon's `python -m edge evaluate` with an exported model as embedder

Real aligned crops (parity, calibration, cosine) come from `--crops DIR`: person folders or a
flat folder of photos (aligned by the daemon's own pipeline, cached) or of 112×112 crops.
Exit status: 0 done, 1 refused (parity or INT8 floor), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge.config import PROJECT_ROOT

log = logging.getLogger(__name__)

ARTEFACTS = PROJECT_ROOT / "models" / "artefacts"
CACHE = PROJECT_ROOT / ".state" / "kit-cache"
SHARED_LFW = (PROJECT_ROOT / ".." / "shared" / "data" / "lfw-subset").resolve()
TEST_PHOTOS = PROJECT_ROOT / "tests" / ".data"


class UsageError(RuntimeError):
    """Bad input: printed as one `error:` line, exit status 2."""


def _default_crops() -> Path:
    return SHARED_LFW if SHARED_LFW.is_dir() else TEST_PHOTOS


def _crops(source: Path | None, limit: int, cache: Path) -> Any:
    from models.kit.data import real_crops

    src = source or _default_crops()
    try:
        crops = real_crops(src, limit, cache)
    except (ValueError, OSError) as err:
        raise UsageError(f"--crops {src}: {err}") from None
    log.info("%d real aligned crops from %s", len(crops), src)
    return crops


def _add_crops(p: argparse.ArgumentParser, limit: int) -> None:
    p.add_argument(
        "--crops",
        type=Path,
        default=None,
        help=f"real face photos or aligned crops (default: {_default_crops()})",
    )
    p.add_argument("--crops-limit", type=int, default=limit, help="use at most this many crops")
    p.add_argument("--cache-dir", type=Path, default=CACHE, help="aligned-crop cache")


def _add_quant(p: argparse.ArgumentParser) -> None:
    from models.kit.quantize import DEFAULT_MIN_COSINE

    p.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help="refuse to publish INT8 below this mean cosine to FP32 (default %(default)s)",
    )
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq", help="INT8 graph form")
    p.add_argument(
        "--per-tensor", action="store_true", help="one weight scale per tensor, not per channel"
    )
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (old CPUs)")
    p.add_argument("--activation", choices=("u8", "s8"), default="u8", help="activation type")
    p.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument(
        "--ops", choices=("all", "conv", "conv_gemm"), default="all", help="ops given INT8 kernels"
    )
    p.add_argument(
        "--extreme-ranges",
        action="store_true",
        help="MinMax over the extreme ranges seen, not their moving average",
    )
    p.add_argument("--calib", type=int, default=64, help="crops used for calibration")
    p.add_argument("--runs", type=int, default=30, help="timed runs per model")


def _quant_options(args: argparse.Namespace) -> Any:
    from models.kit.quantize import QuantOptions

    return QuantOptions(
        quant_format=args.format,
        per_channel=not args.per_tensor,
        reduce_range=args.reduce_range,
        activation=args.activation,
        calibration=args.calibration,
        ops=args.ops,
        moving_average=not args.extreme_ranges,
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m models.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("onnx", help="checkpoint → ONNX + manifest entry (parity-checked)")
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    p.add_argument("--id", default=None, help="manifest id (default: maskgate-<backbone>)")
    p.add_argument(
        "--out", type=Path, default=None, help="ONNX file (default: models/artefacts/<id>.onnx)"
    )
    p.add_argument("--min-parity", type=float, default=0.9999, help="min torch/ONNX cosine")
    p.add_argument(
        "--licence",
        default="UNSPECIFIED",
        help="licence of the weights (they inherit the training data's terms)",
    )
    p.add_argument("--int8", action="store_true", help="also write the INT8 model and its entry")
    _add_crops(p, 128)
    _add_quant(p)
    p.set_defaults(run=cmd_onnx)

    p = sub.add_parser("int8", help="ONNX → static INT8 + manifest entry (cosine floor)")
    p.add_argument("--onnx", type=Path, required=True, help="FP32 model")
    p.add_argument(
        "--entries", type=Path, default=None, help="the FP32 model's entry file (from `onnx`)"
    )
    p.add_argument("--id", default=None, help="manifest id (default: <fp32 id>-int8)")
    p.add_argument("--out", type=Path, default=None, help="INT8 file (default: beside FP32)")
    _add_crops(p, 128)
    _add_quant(p)
    p.set_defaults(run=cmd_int8)

    p = sub.add_parser("tensorrt", help="ONNX → TensorRT engine (FP16 or INT8), on a Jetson")
    p.add_argument("--onnx", type=Path, required=True, help="FP32 model")
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument("--out", type=Path, default=None, help="engine file (default: beside ONNX)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the profile")
    _add_crops(p, 256)
    p.set_defaults(run=cmd_tensorrt)

    p = sub.add_parser("bench", help="FP32 vs INT8 latency and cosine (r18, r50, a checkpoint)")
    p.add_argument("--arch", nargs="*", default=["r18", "r50"], help="random-weight backbones")
    p.add_argument("--checkpoint", type=Path, default=None, help="also bench a trained model")
    p.add_argument("--sweep", action="store_true", help="try each INT8 option change in turn")
    p.add_argument(
        "--levels",
        nargs="+",
        default=["all"],
        choices=("disable", "basic", "extended", "all"),
        help="ONNX Runtime graph optimisation levels to time",
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (door: 2)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    _add_crops(p, 128)
    _add_quant(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("evaluate", help="`python -m edge evaluate` with an exported embedder")
    p.add_argument("--entries", type=Path, required=True, help="entry file from `onnx`/`int8`")
    p.add_argument("--id", default=None, help="which entry (default: the only/first one)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (person folders)")
    p.add_argument("--protocol", default="all", help="as `edge evaluate --protocol`")
    p.add_argument("--config", type=Path, default=None, help="base daemon config.yaml")
    p.set_defaults(run=cmd_evaluate)
    return ap


def _entries_path(model: Path) -> Path:
    return model.with_name(model.name.removesuffix(".onnx") + ".manifest.yaml")


def cmd_onnx(args: argparse.Namespace) -> int:
    from models.kit.export import embedder_entry, export_checked, trained_origin, write_entries
    from models.kit.train import load_backbone

    if not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    model, ckpt = load_backbone(args.checkpoint)
    backbone = ckpt["config"]["model"]["backbone"]
    model_id = args.id or f"maskgate-{backbone}"
    out = args.out or ARTEFACTS / f"{model_id}.onnx"
    crops = _crops(args.crops, args.crops_limit, args.cache_dir)
    parity = export_checked(model, out, crops, args.min_parity)
    origin = trained_origin(args.checkpoint, ckpt) | {"parity": parity.as_dict()}
    size = ckpt["config"]["model"]["embedding_size"]
    entries = [
        embedder_entry(
            model_id,
            out,
            size,
            origin,
            args.licence,
            notes=f"iresnet {backbone} trained by models.train; ONNX opset 17, dynamic batch.",
        )
    ]
    report: dict[str, Any] = {"onnx": str(out), "parity": parity.as_dict()}
    if args.int8:
        int8_entry, int8_report = _int8(args, out, entries[0], crops)
        entries.append(int8_entry)
        report["int8"] = int8_report
    report["entries"] = str(write_entries(entries, _entries_path(out)))
    print(json.dumps(report, indent=2))
    return 0


def _int8(
    args: argparse.Namespace, fp32: Path, parent: dict[str, Any] | None, crops: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    from models.kit.export import embedder_entry, manifest_file, versions
    from models.kit.quantize import quantize_checked

    parent_id = parent["id"] if parent else fp32.stem
    model_id = getattr(args, "id", None) if args.command == "int8" else None
    model_id = model_id or f"{parent_id}-int8"
    out = (args.out if args.command == "int8" else None) or fp32.with_name(f"{model_id}.onnx")
    options = _quant_options(args)
    report = quantize_checked(
        fp32, out, crops, args.min_cosine, options, calib=args.calib, runs=args.runs
    )
    base = dict(parent["origin"]) if parent else {"kind": "trained"}
    origin = base | {
        "transform": "int8_static",
        "parent": parent_id,
        "parent_file": manifest_file(fp32),
        "quantization": {
            "options": options.label(),
            "calibration_crops": min(args.calib, len(crops)),
            "cosine_to_parent": {
                "mean": round(report.cosine_mean, 5),
                "p1": round(report.cosine_p1, 5),
                "crops": report.crops,
            },
            "latency_ms": {"fp32": round(report.fp32_ms, 2), "int8": round(report.int8_ms, 2)},
            "floor": args.min_cosine,
        },
        "tools": versions(),
    }
    origin.pop("parity", None)
    size = parent["output"]["size"] if parent else 512
    licence = parent["licence"] if parent else "UNSPECIFIED"
    entry = embedder_entry(
        model_id,
        out,
        size,
        origin,
        licence,
        notes=f"static INT8 ({options.label()}) of {parent_id}, ONNX Runtime CPU.",
    )
    return entry, report.as_dict()


def cmd_int8(args: argparse.Namespace) -> int:
    from models.kit.export import read_entries, write_entries

    if not args.onnx.is_file():
        raise UsageError(f"--onnx {args.onnx}: no such file")
    parent = None
    if args.entries:
        entries = read_entries(args.entries)
        match = [e for e in entries.values() if Path(e["file"]).name == args.onnx.name]
        parent = match[0] if match else None
    crops = _crops(args.crops, args.crops_limit, args.cache_dir)
    entry, report = _int8(args, args.onnx, parent, crops)
    out_entries = _entries_path(PROJECT_ROOT / "models" / entry["file"])
    report["entries"] = str(write_entries([entry], out_entries))
    print(json.dumps(report, indent=2))
    return 0


def cmd_tensorrt(args: argparse.Namespace) -> int:
    from models.kit.tensorrt import TensorRTUnavailable, build_engine, tensorrt_status

    ok, why = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(why)
    crops = (
        _crops(args.crops, args.crops_limit, args.cache_dir) if args.precision == "int8" else None
    )
    out = args.out or args.onnx.with_suffix(f".{args.precision}.engine")
    build_engine(args.onnx, out, args.precision, crops, args.max_batch)
    print(json.dumps({"engine": str(out), "precision": args.precision, "tensorrt": why}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from models.kit.bench import format_table, run_bench

    crops = _crops(args.crops, args.crops_limit, args.cache_dir)
    rows = run_bench(
        args.arch,
        crops,
        checkpoint=args.checkpoint,
        options=None if args.sweep else (_quant_options(args),),
        levels=tuple(args.levels),
        calib=args.calib,
        threads=args.threads,
        runs=args.runs,
    )
    print(format_table(rows, args.min_cosine))
    text = json.dumps(rows, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.kit.evaluation import evaluate_with_daemon
    from models.kit.export import read_entries

    entries = read_entries(args.entries)
    model_id = args.id or next(iter(entries))
    if model_id not in entries:
        raise UsageError(f"{args.entries} has no entry {model_id!r} (has {', '.join(entries)})")
    entry = entries[model_id]
    file = Path(entry["file"])
    file = file if file.is_absolute() else PROJECT_ROOT / "models" / file
    report = evaluate_with_daemon(file, entry, args.data, args.protocol, args.config)
    report.pop("roc", None)  # hundreds of points; `edge evaluate --plot` draws them
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from models.kit.export import ExportRefused
    from models.kit.quantize import QuantizationRefused
    from models.kit.tensorrt import TensorRTUnavailable

    try:
        return int(args.run(args) or 0)
    except (ExportRefused, QuantizationRefused) as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except TensorRTUnavailable as err:
        print(f"error: cannot build a TensorRT engine here: {err}", file=sys.stderr)
        return 2
    except (UsageError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
