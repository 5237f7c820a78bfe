"""The training config: typed, bounded and described; unknown keys are errors.

    python -m models.train --config models/configs/tiny.yaml

Relative paths in the YAML resolve against the YAML file's folder, like the daemon's config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.config import format_validation_error
from models.kit.backbones import ARCHS

log = logging.getLogger(__name__)

Backbone = Literal["r18", "r34", "r50", "r100", "edge"]
assert set(Backbone.__args__) == set(ARCHS), "Backbone literal out of step with ARCHS"  # type: ignore[attr-defined]


class TrainConfigError(ValueError):
    """The training config is missing, unreadable or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskAugmentConfig(_Strict):
    probability: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Chance that a training crop gets a synthetic mask drawn on it "
        "(edge.vision.maskrender.MaskAugment); 0 turns the hook off.",
    )
    db: Path | None = Field(
        None, description="Mask texture database handed to MaskAugment (its default when null)."
    )


class DataConfig(_Strict):
    train_dir: Path = Field(..., description="Folder of person folders (one identity each).")
    format: Literal["raw", "aligned"] = Field(
        "raw",
        description="raw: photos, aligned once by the daemon's own pipeline and cached; "
        "aligned: already ArcFace-aligned 112×112 crops.",
    )
    val_dir: Path | None = Field(
        None, description="Separate folder of held-out identities for periodic evaluation."
    )
    val_identities: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Without val_dir: hold out this many identities of train_dir (the last "
        "ones in name order) for evaluation; 0 for none.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where raw photos' aligned crops (and mesh points) are cached "
        "(checkpoint_dir/aligned-cache when null).",
    )
    pipeline_config: Path | None = Field(
        None,
        description="Daemon config.yaml whose landmark models align raw photos "
        "(the project's config.yaml when null).",
    )
    min_images: int = Field(
        2, ge=1, le=1000, description="Identities with fewer usable images are left out."
    )
    flip: bool = Field(True, description="Random horizontal flips (p = 0.5).")
    mask_augment: MaskAugmentConfig = Field(
        default_factory=MaskAugmentConfig, description="Synthetic masks on training crops."
    )
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")


class ModelConfig(_Strict):
    backbone: Backbone = Field("r50", description="iresnet by name (models.kit.backbones).")
    embedding_size: int = Field(512, ge=16, le=4096, description="Embedding length.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the head's FC.")
    widths: tuple[int, int, int, int] | None = Field(
        None, description="Override the backbone's stage widths (experiments, tests)."
    )
    blocks: tuple[int, int, int, int] | None = Field(
        None, description="Override the backbone's blocks per stage (experiments, tests)."
    )

    @field_validator("widths", "blocks")
    @classmethod
    def _positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and not all(1 <= x <= 4096 for x in v):
            raise ValueError("every entry must be between 1 and 4096")
        return v


class LossConfig(_Strict):
    kind: Literal["cosface", "arcface", "combined"] = Field(
        "cosface", description="Margin loss; combined uses m1, m2, m3 as given."
    )
    s: float = Field(64.0, gt=0.0, le=256.0, description="Logit scale.")
    m: float | None = Field(
        None,
        ge=0.0,
        le=1.5,
        description="Margin of cosface (default 0.4) or arcface (default 0.5, radians).",
    )
    m1: float = Field(1.0, ge=1.0, le=4.0, description="combined: angle multiplier.")
    m2: float = Field(0.0, ge=0.0, le=1.5, description="combined: additive angle (radians).")
    m3: float = Field(0.0, ge=0.0, le=1.0, description="combined: additive cosine margin.")
    easy_margin: bool = Field(False, description="Apply angular margins only where cos θ > 0.")

    @property
    def margins(self) -> tuple[float, float, float]:
        """(m1, m2, m3) of the combined form for this config."""
        if self.kind == "cosface":
            return 1.0, 0.0, 0.4 if self.m is None else self.m
        if self.kind == "arcface":
            return 1.0, 0.5 if self.m is None else self.m, 0.0
        return self.m1, self.m2, self.m3


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimiser.")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="Weight decay.")
    schedule: Literal["poly", "cosine", "constant"] = Field(
        "poly", description="Decay after warm-up: polynomial (power 2), cosine or none."
    )
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear warm-up from 0.")
    grad_clip: float | None = Field(
        5.0, gt=0.0, description="Clip the backbone's gradient norm (null: no clipping)."
    )


class TrainConfig(_Strict):
    data: DataConfig = Field(..., description="Training and evaluation data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Margin loss.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser, schedule.")
    batch_size: int = Field(128, ge=2, le=65_536, description="Crops per step.")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Train this many epochs...")
    max_steps: int | None = Field(
        None, ge=1, le=100_000_000, description="...or this many steps (the smaller wins)."
    )
    eval_every: int = Field(
        0, ge=0, description="Evaluate on the held-out identities every N steps (0: at the end)."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Write a checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(3, ge=1, le=1000, description="Step checkpoints to keep.")
    checkpoint_dir: Path = Field(..., description="Checkpoints and the training log go here.")
    resume: bool | Path = Field(
        False,
        description="true: continue from checkpoint_dir/last.pt when present; a path: from "
        "that checkpoint.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of every random draw.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available, else CPU."
    )
    amp: bool = Field(True, description="Mixed precision (float16 autocast) on CUDA; off on CPU.")
    log_every: int = Field(10, ge=1, description="Log the loss every N steps.")
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads (null: all).")

    @model_validator(mode="after")
    def _length_given(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps (or both)")
        if self.data.format == "aligned" and self.data.mask_augment.probability > 0:
            raise ValueError(
                "data.mask_augment needs mesh points, which only raw photos give "
                "(format: raw), not pre-aligned crops"
            )
        return self

    def resolved(self, base_dir: Path) -> TrainConfig:
        """A copy with every relative path made absolute against base_dir."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base_dir / p).resolve())

        data = self.data.model_copy(
            update={
                "train_dir": fix(self.data.train_dir),
                "val_dir": fix(self.data.val_dir),
                "cache_dir": fix(self.data.cache_dir),
                "pipeline_config": fix(self.data.pipeline_config),
                "mask_augment": self.data.mask_augment.model_copy(
                    update={"db": fix(self.data.mask_augment.db)}
                ),
            }
        )
        resume = self.resume if isinstance(self.resume, bool) else fix(self.resume)
        ckpt = fix(self.checkpoint_dir)
        if data.cache_dir is None:
            data = data.model_copy(update={"cache_dir": ckpt / "aligned-cache"})
        return self.model_copy(update={"data": data, "checkpoint_dir": ckpt, "resume": resume})


def parse_train_config(
    data: object, source: str = "config", base_dir: Path | None = None
) -> TrainConfig:
    """Validate parsed YAML; relative paths resolve against base_dir (default: cwd)."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{source}: the top level must be a mapping")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as err:
        raise TrainConfigError(format_validation_error(err, source)) from None
    return cfg.resolved(base_dir or Path.cwd())


def load_train_config(path: Path | str) -> TrainConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise TrainConfigError(f"{p}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_train_config(data, str(p), p.resolve().parent)
