"""TensorRT engines (FP16, INT8) from the exported ONNX model, for a Jetson.

`tensorrt` comes with JetPack on a Jetson; PyPI's `tensorrt` is a stub that downloads from
NVIDIA's own index, so everywhere else this module reports why it cannot build instead of
failing at import. INT8 is calibrated with TensorRT's entropy calibrator over the same real
aligned crops as the ONNX Runtime INT8 model. The engine is specific to the GPU and TensorRT
version it was built with: build it on the device that runs it.

(The daemon can also let ONNX Runtime's TensorRT provider build and cache an engine from the
ONNX file: `runtime.providers: [tensorrt, ...]`. This builder gives an explicit, calibrated
INT8 engine instead.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.kit.data import INPUT_NAME, normalise

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """This machine cannot build TensorRT engines; the message says why."""


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason or version)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as err:
        return False, (
            f"the tensorrt Python module is not installed ({err}); it ships with JetPack on a "
            "Jetson (PyPI's `tensorrt` only fetches NVIDIA's own wheels)"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return False, f"tensorrt {trt.__version__} is installed, but no CUDA GPU is visible"
    except ImportError:
        return False, "the INT8 calibrator stages batches on the GPU with torch, not installed"
    return True, f"tensorrt {trt.__version__}"


def _entropy_calibrator(trt: Any, crops_bgr: np.ndarray, batch: int, cache: Path) -> Any:
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds real aligned crops in batches from GPU memory; caches the scales it learns."""

        def __init__(self) -> None:
            super().__init__()
            self._i = 0
            self._device = torch.empty((batch, 3, 112, 112), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._i + batch > len(crops_bgr):
                return None
            x = normalise(crops_bgr[self._i : self._i + batch])
            self._device.copy_(torch.from_numpy(x))
            self._i += batch
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: Literal["fp16", "int8"] = "fp16",
    calib_crops: np.ndarray | None = None,
    max_batch: int = 8,
    workspace_mb: int = 1024,
) -> Path:
    """Build and write a serialized engine with a dynamic batch profile 1..max_batch."""
    ok, why = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(why)
    import tensorrt as trt  # type: ignore[import-not-found]

    if precision == "int8" and (calib_crops is None or len(calib_crops) < max_batch):
        raise ValueError(f"INT8 needs at least {max_batch} real aligned crops to calibrate")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 8 needs the explicit-batch flag; 10 has only explicit batch and ignores it.
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(
        trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"
    ):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    opt = min(4, max_batch)
    profile.set_shape(INPUT_NAME, (1, 3, 112, 112), (opt, 3, 112, 112), (max_batch, 3, 112, 112))
    config.add_optimization_profile(profile)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    if precision == "int8":
        if not builder.platform_has_fast_int8:
            log.warning("this GPU has no fast INT8; the engine may not be faster than FP16")
        config.set_flag(trt.BuilderFlag.INT8)
        cache = engine_path.with_suffix(".calib")
        config.int8_calibrator = _entropy_calibrator(trt, calib_crops, max_batch, cache)
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    log.info(
        "wrote %s engine %s (%.1f MB)", precision, engine_path, engine_path.stat().st_size / 1e6
    )
    return engine_path
