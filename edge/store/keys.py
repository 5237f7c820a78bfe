"""The store's 32-byte AES key: a systemd credential or a 0600 key file created on first start.

The key is kept as 64 hex digits and a newline (raw 32-byte files are accepted too).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from edge.store.records import StoreError

log = logging.getLogger(__name__)

KEY_BYTES = 32


def load_key(key_file: Path, credential: str | None, *, create: bool = True) -> bytes:
    """The 32-byte store key: a systemd credential when one is passed, else the key file.

    A missing key file is created (random key, mode 0600) unless `create` is False, which
    Store.open passes when a store already exists: a fresh key could never open it.
    """
    cred = _credential_path(credential)
    if cred is not None and cred.is_file():
        log.info("template key from systemd credential %s", credential)
        return _parse_key(_read_secret(cred, f"systemd credential {credential!r}"), str(cred))
    key_file = Path(key_file)
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"{key_file}: key file missing; the existing template store can only be opened "
                "with the key it was created with (restore the key file or re-enroll)"
            ) from None
    return _create_key_file(key_file)


def _credential_path(credential: str | None) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not credential or not directory:
        return None
    if "/" in credential or credential in (".", ".."):
        raise StoreError(f"systemd credential name {credential!r} must be a plain file name")
    return Path(directory) / credential


def _read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise StoreError(f"{path}: cannot read {what}: {err.strerror or err}") from None


def _read_key_file(path: Path) -> bytes:
    """Read and check a key file; FileNotFoundError passes through to mean 'create one'."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise StoreError(f"{path}: cannot open key file: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # the opened file itself: no window for a swap
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: key file is not a regular file")
        if st.st_mode & 0o077:
            raise StoreError(
                f"{path}: key file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = f.read(257)
    return _parse_key(data, str(path))


def _parse_key(data: bytes, where: str) -> bytes:
    # Raw 32 bytes, or 64 hex digits (what `openssl rand -hex 32` writes).
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise StoreError(
        f"{where}: not a template key: expected 32 raw bytes or 64 hex digits, "
        f"found {len(data)} bytes"
    )


def create_secret_file(path: Path, data: bytes) -> bool:
    """Write `data` as a new file readable by its owner only, atomically: False (and nothing
    written) when the name exists already, so a racing process keeps the file that won.
    Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # exact mode whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: a complete file appears at once, never half written.
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _create_key_file(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        created = create_secret_file(path, key.hex().encode("ascii") + b"\n")
    except OSError as err:
        raise StoreError(f"{path}: cannot create key file: {err.strerror or err}") from None
    if not created:
        log.info("key file %s appeared meanwhile; using it", path)
        return _read_key_file(path)
    log.warning(
        "created a new template key %s: back it up, the store is unreadable without it", path
    )
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
