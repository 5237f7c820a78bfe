"""Frame → face result: landmarks, quality gates, alignment, mask state, embedding.

The door, enrollment, the CLI, evaluation and benchmarks all go through `Pipeline.process`, so
their numbers describe what the door does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edge.config import Config
from edge.manifest import load_manifest, verify
from edge.maskreuse import MaskReuse
from edge.vision.align import align_face, mesh_box_crop
from edge.vision.detector import YuNetDetector
from edge.vision.embed import Embedder
from edge.vision.landmarks import MeshBackend
from edge.vision.locate import CrossCheck, FaceLocation, locate
from edge.vision.mask import MaskClassifier
from edge.vision.mesh_litert import LiteRTMesh
from edge.vision.mesh_tasks import TasksMesh
from edge.vision.quality import FaceRejected, Quality, check_geometry, check_sharpness

log = logging.getLogger(__name__)

STAGES = ("landmarks", "align", "mask", "embed")


@dataclass
class FaceResult:
    face: FaceLocation
    aligned: np.ndarray  # 112×112 BGR
    masked: bool
    mask_prob: float
    embedding: np.ndarray  # (dim,) float32, unit length
    quality: Quality
    timings_ms: dict[str, float] = field(default_factory=dict)
    mask_reused: bool = False  # the track's earlier verdict, not a classifier run

    def face_dict(self) -> dict[str, int]:
        x, y, w, h = self.face.box
        return {"x": x, "y": y, "w": w, "h": h}


def release_freed_memory() -> None:
    """Hand the memory freed while loading models back to the system (glibc keeps it
    otherwise: ~36 MB after the ONNX sessions parsed their models). Peak RSS counts it."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Pipeline:
    """Loads the configured models once (verified against the manifest and warmed up)."""

    def __init__(self, cfg: Config, video: bool = False) -> None:
        self.cfg = cfg
        manifest = load_manifest(cfg.resolve(cfg.models.manifest))
        self._mesh_entry = manifest.get(cfg.models.landmarker, "landmarks")
        self._task_file = verify(manifest, self._mesh_entry)
        self.detector = None
        if cfg.models.detector:
            det_entry = manifest.get(cfg.models.detector, "detector")
            self.detector = YuNetDetector(verify(manifest, det_entry))
        profile_dir = cfg.runtime.profile_dir
        runtime = cfg.runtime.model_copy(
            update={
                "trt_cache_dir": cfg.state_path(cfg.runtime.trt_cache_dir),
                "profile_dir": cfg.state_path(profile_dir) if profile_dir else None,
            }
        )
        self.embedder = Embedder(manifest, manifest.get(cfg.models.embedder, "embedder"), runtime)
        self.mask = MaskClassifier(
            manifest, manifest.get(cfg.models.mask_classifier, "mask_classifier"), runtime
        )
        self.model_id = self.embedder.model_id
        release_freed_memory()  # what loading the ONNX models freed, before the mesh loads
        # The camera stream classifies the mask once per track (edge/maskreuse.py).
        self.mask_reuse = (
            MaskReuse(
                cfg.mask_reuse,
                cfg.decision.track,
                cfg.liveness.blink_max_rigid,
                cfg.match.mask_probability,
            )
            if video and cfg.mask_reuse.enabled
            else None
        )
        # The mesh last: every other model is checked by now, so a failure above never leaves
        # a MediaPipe graph open (its threads would complain at exit).
        self.landmarker = self._make_landmarker(video)
        # The camera stream's detector cross-checks a continuing track every few frames only.
        self.cross_check = (
            CrossCheck(cfg.landmarks.detector_every, cfg.decision.track.max_gap_s)
            if video
            else None
        )
        # Still photos (enrollment while the door runs) get their own image-mode mesh, so they
        # never disturb the video-mode tracking of the camera stream.
        self._still: MeshBackend | None = None if video else self.landmarker
        self._still_lock = threading.Lock()
        try:
            self.landmarker.detect(np.zeros((64, 64, 3), np.uint8))  # warm-up
        except BaseException:
            self.landmarker.close()
            raise

    def _make_landmarker(self, video: bool) -> MeshBackend:
        lm = self.cfg.landmarks
        if lm.type == "litert":
            return LiteRTMesh(
                self._task_file,
                self._mesh_entry.input,
                threads=self.cfg.runtime.threads,
                min_presence_confidence=lm.min_presence_confidence,
                video=video,
            )
        return TasksMesh(
            self._task_file,
            # The camera stream tracks one face (tracking skips the detector on later frames);
            # YuNet still sees every face, and locate() switches to a clearly larger one.
            max_faces=1 if video else lm.max_faces,
            min_detection_confidence=lm.min_detection_confidence,
            min_presence_confidence=lm.min_presence_confidence,
            video=video,
        )

    def close(self) -> None:
        self.landmarker.close()
        if self._still is not None and self._still is not self.landmarker:
            self._still.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(
        self, image: np.ndarray, timestamp_ms: int | None = None, still: bool = False
    ) -> FaceLocation:
        """The largest face, or FaceRejected(no_face). `still` uses the image-mode mesh."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = getattr(image, "dtype", type(image).__name__)
            raise FaceRejected(FaceRejected.BAD_IMAGE, f"expected an 8-bit BGR image, got {kind}")
        if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            raise FaceRejected(
                FaceRejected.BAD_IMAGE, f"expected H×W×3 BGR, got shape {image.shape}"
            )
        gap = self.cfg.landmarks.max_disagreement
        if still and self.landmarker.video:
            with self._still_lock:  # one still photo at a time (enrollment requests)
                if self._still is None:
                    self._still = self._make_landmarker(video=False)
                face = locate(image, self._still, self.detector, gap)
        else:
            face = locate(
                image, self.landmarker, self.detector, gap, timestamp_ms, self.cross_check
            )
        if face is None:
            raise FaceRejected(FaceRejected.NO_FACE, "no face found")
        return face

    def process(
        self,
        image: np.ndarray,
        timestamp_ms: int | None = None,
        still: bool = False,
        face: FaceLocation | None = None,
    ) -> FaceResult:
        """Run the whole chain on the largest face; raises FaceRejected with a reason.

        `face`: a location already found for this very image (skips the landmark step).
        """
        t0 = time.perf_counter()
        face = face if face is not None else self.detect(image, timestamp_ms, still)
        check_geometry(face, self.cfg.quality)
        t1 = time.perf_counter()
        aligned = align_face(image, face.five)
        sharp = check_sharpness(aligned, self.cfg.quality)
        t2 = time.perf_counter()
        emb = self.embedder.embed([aligned])[0]
        t3 = time.perf_counter()

        def classify() -> float:
            return float(self.mask.mask_probability([mesh_box_crop(image, face.box)])[0])

        reused = False
        if self.mask_reuse is not None and timestamp_ms is not None and not still:
            mask_prob, reused = self.mask_reuse.probability(
                face, timestamp_ms / 1000.0, emb, aligned, classify
            )
        else:
            mask_prob = classify()
        t4 = time.perf_counter()
        t = {
            "landmarks": (t1 - t0) * 1e3,
            "align": (t2 - t1) * 1e3,
            "mask": (t4 - t3) * 1e3,
            "embed": (t3 - t2) * 1e3,
        }
        return FaceResult(
            face=face,
            aligned=aligned,
            masked=mask_prob >= self.cfg.match.mask_probability,
            mask_prob=mask_prob,
            embedding=emb,
            quality=Quality(face.width, face.yaw, face.pitch, sharp),
            timings_ms=t,
            mask_reused=reused,
        )
