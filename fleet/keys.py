"""The fleet's Ed25519 signing key: created once by `fleet init`, 0600, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.mqtt.signing import generate_keypair, load_private_key, public_key_b64
from edge.store.keys import create_secret_file


class KeyError_(RuntimeError):
    """The key file is missing, unreadable or too open; the message says which."""


def create_key(path: Path) -> tuple[str, bool]:
    """(public key base64, created): an existing key is kept, never replaced."""
    if path.exists():
        return public_key_b64(load_key(path)), False
    pem, pub = generate_keypair()
    try:
        created = create_secret_file(path, pem)  # atomic: never a half-written key
    except OSError as err:
        raise KeyError_(f"{path}: cannot create the signing key: {err.strerror or err}") from None
    if not created:  # another `init` won the race: keep its key
        return public_key_b64(load_key(path)), False
    return pub, True


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise KeyError_(f"{path}: no signing key; run `maskgate-fleet init` first") from None
    if mode & 0o077:
        raise KeyError_(f"{path}: signing key is readable by others (mode {mode:04o}); chmod 600")
    try:
        return load_private_key(path)
    except ValueError as err:
        raise KeyError_(f"{path}: {err}") from None
