"""What the template store holds and reports, and its one error type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class StoreError(RuntimeError):
    """The template store cannot do what was asked; the message names the file and the problem."""

    reason: str | None = None  # machine-readable, where a requester may act on it


class PersonNotFound(StoreError):
    """The person is not in the store (a delete of someone already gone, for one)."""

    reason = "no_person"


@dataclass(eq=False)  # eq would compare arrays element-wise and fail on truth value
class Template:
    """One embedding of a person, and how it was made."""

    embedding: np.ndarray  # float32, 1-D, L2-normalised
    model_id: str  # manifest id of the embedder that made it
    masked: bool = False
    synthetic: bool = False  # made from a rendered variant (e.g. a drawn-on mask)
    source: str = "photo"  # "photo", "server", "variant:<name>", ...
    crop_jpeg: bytes | None = None  # aligned 112×112 face, to re-embed for a new model


@dataclass(frozen=True)
class PersonInfo:
    person_id: str
    name: str | None
    templates: int
    models: list[str]  # sorted model ids of the person's templates
    created: float  # unix seconds
    updated: float


@dataclass(frozen=True)
class StoreState:
    version: int  # only grows; every committed change bumps it
    hash: str  # sha256 hex of the template set, see _content_hash()
    persons: int
    templates: int
    model_ids: list[str]  # every model id in the store, sorted
    model_id: str | None = None  # set when persons/templates/hash cover only this model
