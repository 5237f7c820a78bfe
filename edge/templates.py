"""The template store as the door matches against it: one model's gallery, and its state.

The gallery is reloaded whenever the store's version moves (an MQTT request, or a local
`edge enroll` beside the running door); the state (version, hash, count, model id) is what the
door announces on MQTT so a server sees drift.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.match import Gallery
from edge.store import Store, StoreState

log = logging.getLogger(__name__)


def state_dict(state: StoreState, model_id: str) -> dict[str, Any]:
    return {
        "version": state.version,
        "hash": state.hash,
        "count": state.persons,
        "model_id": model_id,
    }


def adopt_embedder(store: Store, model_id: str, embed: Callable[[np.ndarray], np.ndarray]) -> int:
    """After an embedder change: this model's templates from the stored crops, so the people
    enrolled under the old model are still let in (their old templates stay, unused).

    Returns how many templates were added; warns about people it could not cover (no crops
    kept, or enrolled from a server's ready embeddings), who must be enrolled again."""
    everyone = store.state().persons
    if store.state(model_id).persons == everyone:  # the usual start: no crop is read
        return 0
    added = store.reembed(model_id, embed)
    if added:
        log.warning(
            "the embedder is now %s: re-embedded %d stored face crops for it", model_id, added
        )
    missing = everyone - store.state(model_id).persons
    if missing:
        log.warning(
            "%d enrolled people have no %s template (no stored crop to re-embed): enroll them "
            "again, or go back to the embedder they were enrolled with (models.embedder)",
            missing,
            model_id,
        )
    return added


class Templates:
    """One model's view of the store; thread-safe (frame loop and request lanes)."""

    def __init__(
        self,
        store: Store,
        model_id: str,
        publish_state: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.model_id = model_id
        self._publish_state = publish_state
        self._lock = threading.Lock()
        self._announce_lock = threading.Lock()
        self._gallery: Gallery | None = None
        self._version = -1

    @property
    def gallery(self) -> Gallery | None:
        with self._lock:
            return self._gallery

    def refresh(self, force: bool = False) -> None:
        """Load the templates when the store's version moved."""
        state = self.store.state()
        if not force and state.version == self._version:
            return
        gallery = self.store.gallery(self.model_id)
        with self._lock:
            # Two threads may refresh at once: never let an older set replace a newer one.
            if force or state.version >= self._version:
                self._gallery, self._version = gallery, state.version
        log.info("templates v%d loaded: %d people", state.version, state.persons)

    def state(self) -> dict[str, Any]:
        """What this door can match against (this model's templates only)."""
        return state_dict(self.store.state(self.model_id), self.model_id)

    def announce(self) -> dict[str, Any]:
        """Publish the current state (retained); returns it."""
        # One at a time: two lanes announcing at once must not leave the older state last.
        with self._announce_lock:
            state = self.state()
            if self._publish_state is not None:
                self._publish_state(state)
            return state

    def changed(self) -> dict[str, Any]:
        """After a write: reload the gallery and announce the new state."""
        self.refresh(force=True)
        return self.announce()
