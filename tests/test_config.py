"""config.yaml validation: valid and invalid tables, secrets, and files that cannot be used."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import yaml

from edge.config import (
    DEFAULT_CONFIG,
    PROJECT_ROOT,
    Config,
    ConfigError,
    GStreamerCamera,
    UrlCamera,
    V4L2Camera,
    load_config,
    parse_config,
)


def test_shipped_config_loads() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.base_dir == DEFAULT_CONFIG.parent
    # The file's values, not only the defaults: these lines are in config.yaml.
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    assert cfg.quality.min_face_px == raw["quality"]["min_face_px"]
    assert cfg.match.threshold_masked == raw["match"]["threshold_masked"]
    assert cfg.match.threshold_unmasked == raw["match"]["threshold_unmasked"]
    assert cfg.resolve(cfg.models.manifest).is_file()


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text("models:\n  manifest: m/manifest.yaml\n", encoding="utf-8")
    cfg = load_config(f)
    assert cfg.resolve(cfg.models.manifest) == tmp_path.resolve() / "m" / "manifest.yaml"
    assert cfg.resolve(Path("/abs/x")) == Path("/abs/x")


VALID = {
    "empty mapping": {},
    "defaults spelled out": {"runtime": {"threads": 2, "providers": ["cpu"]}},
    "detector disabled (the Tasks mesh finds faces itself)": {
        "models": {"detector": None},
        "landmarks": {"type": "tasks"},
    },
    "v4l2 by index": {"camera": {"type": "v4l2", "device": 0, "fps": 30}},
    "v4l2 by path": {
        "camera": {"type": "v4l2", "device": "/dev/video2", "width": 640, "height": 480}
    },
    "gstreamer": {"camera": {"type": "gstreamer", "pipeline": "videotestsrc ! appsink"}},
    "url": {"camera": {"type": "url", "url": "rtsp://cam.local/stream"}},
    "file": {"camera": {"type": "file", "path": "clip.mp4", "loop": True}},
    "folder": {"camera": {"type": "folder", "path": "frames", "fps": 2.5}},
    "mqtt": {
        "mqtt": {"host": "broker", "port": 8883, "tls": True, "username": "door", "password": "pw"}
    },
    "bounds inclusive": {
        "runtime": {"threads": 64},
        "quality": {"min_face_px": 16, "max_yaw_deg": 90},
        "match": {"threshold_masked": -1, "threshold_unmasked": 1},
    },
}


@pytest.mark.parametrize("data", VALID.values(), ids=VALID.keys())
def test_valid_config(data: dict) -> None:
    cfg = parse_config(data)
    # Every section given comes back as given (spot-check the leaf values).
    for section, values in data.items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            if hasattr(got, "get_secret_value"):
                got = got.get_secret_value()
            if isinstance(got, Path):
                got = str(got)
            assert got == value, (section, key)


def test_camera_types_pick_their_class() -> None:
    assert isinstance(parse_config({"camera": {"type": "v4l2"}}).camera, V4L2Camera)
    assert isinstance(
        parse_config({"camera": {"type": "url", "url": "rtsp://x"}}).camera, UrlCamera
    )
    assert isinstance(
        parse_config({"camera": {"type": "gstreamer", "pipeline": "a ! appsink"}}).camera,
        GStreamerCamera,
    )


# (config, the key path the message must name, a fragment of the reason)
INVALID = {
    "unknown top-level key": ({"cameras": {}}, "cameras", "Extra inputs"),
    "unknown nested key": (
        {"quality": {"min_face_pixels": 80}},
        "quality.min_face_pixels",
        "Extra inputs",
    ),
    "unknown deep key": ({"models": {"embeder": "sface"}}, "models.embeder", "Extra inputs"),
    "unknown camera key": (
        {"camera": {"type": "v4l2", "devcie": 0}},
        "camera.v4l2.devcie",
        "Extra inputs",
    ),
    "base_dir not settable": ({"base_dir": "/"}, "base_dir", "Extra inputs"),
    "threads 0": ({"runtime": {"threads": 0}}, "runtime.threads", "greater than or equal to 1"),
    "threads 65": ({"runtime": {"threads": 65}}, "runtime.threads", "less than or equal to 64"),
    "threshold 2": (
        {"match": {"threshold_unmasked": 2}},
        "match.threshold_unmasked",
        "less than or equal to 1",
    ),
    "threshold -1.5": (
        {"match": {"threshold_masked": -1.5}},
        "match.threshold_masked",
        "greater than or equal",
    ),
    "mask probability 1": (
        {"match": {"mask_probability": 1}},
        "match.mask_probability",
        "less than 1",
    ),
    "negative min_face_px": (
        {"quality": {"min_face_px": -5}},
        "quality.min_face_px",
        "greater than or equal to 16",
    ),
    "yaw 0": ({"quality": {"max_yaw_deg": 0}}, "quality.max_yaw_deg", "greater than 0"),
    "mqtt port 0": ({"mqtt": {"host": "h", "port": 0}}, "mqtt.port", "greater than or equal to 1"),
    "threads a word": ({"runtime": {"threads": "two"}}, "runtime.threads", "valid integer"),
    "threads fractional": ({"runtime": {"threads": 2.5}}, "runtime.threads", "valid integer"),
    "section not a mapping": ({"runtime": "fast"}, "runtime", "valid dictionary"),
    "providers not a list": (
        {"runtime": {"providers": {"cpu": 1}}},
        "runtime.providers",
        "valid list",
    ),
    "unknown provider": ({"runtime": {"providers": ["tpu"]}}, "runtime.providers.0", "'cpu'"),
    "no providers": ({"runtime": {"providers": []}}, "runtime.providers", "at least 1 item"),
    "tls not a bool": ({"mqtt": {"host": "h", "tls": "sometimes"}}, "mqtt.tls", "valid boolean"),
    "width a list": (
        {"camera": {"type": "v4l2", "width": [640]}},
        "camera.v4l2.width",
        "valid integer",
    ),
    "bad camera type": ({"camera": {"type": "webcam"}}, "camera", "'webcam'"),
    "camera without type": ({"camera": {"device": 0}}, "camera", "discriminator 'type'"),
    "url camera without url": ({"camera": {"type": "url"}}, "camera.url.url", "Field required"),
    "gstreamer without pipeline": (
        {"camera": {"type": "gstreamer"}},
        "camera.gstreamer.pipeline",
        "Field required",
    ),
    "file camera without path": (
        {"camera": {"type": "file"}},
        "camera.file.path",
        "Field required",
    ),
    "mqtt without host": ({"mqtt": {"port": 1883}}, "mqtt.host", "Field required"),
    "empty embedder id": ({"models": {"embedder": ""}}, "models.embedder", "at least 1 character"),
}


@pytest.mark.parametrize(("data", "path", "reason"), INVALID.values(), ids=INVALID.keys())
def test_invalid_config_names_the_key(data: dict, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="site.yaml")
    msg = str(err.value)
    assert msg.startswith("site.yaml")
    # The key path opens one of the message's lines (after the source line), then the reason.
    lines = [line.strip() for line in msg.splitlines()[1:]] or [msg.split(": ", 1)[1]]
    assert any(line.startswith(f"{path}:") and reason in line for line in lines), msg


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"runtime": {"threads": 0}, "quality": {"min_face_px": 1}, "bogus": 1})
    msg = str(err.value)
    assert "3 problem(s)" in msg
    for path in ("runtime.threads", "quality.min_face_px", "bogus"):
        assert f"{path}:" in msg


def test_non_string_top_level_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config({1: "x"})


def test_boolean_threads_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_config({"runtime": {"threads": True}})


def test_high_threshold_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge.config"):
        parse_config({"match": {"threshold_masked": 0.99}})
    assert "above 0.95" in caplog.text


# ------------------------------------------------------------------- secrets


def test_secrets_are_redacted() -> None:
    cfg = parse_config(
        {
            "camera": {"type": "url", "url": "rtsp://admin:cam-secret@10.0.0.5/live"},
            "mqtt": {"host": "broker", "username": "door", "password": "mqtt-secret"},
        }
    )
    red = cfg.redacted()
    text = repr(red) + repr(cfg) + str(cfg)
    assert "cam-secret" not in text and "mqtt-secret" not in text
    assert red["camera"]["url"] == "**********"
    assert red["mqtt"]["password"] == "**********"
    assert red["mqtt"]["username"] == "door" and red["mqtt"]["host"] == "broker"
    # The secrets are still there for the code that needs them.
    assert cfg.camera.url.get_secret_value() == "rtsp://admin:cam-secret@10.0.0.5/live"
    assert cfg.mqtt.password.get_secret_value() == "mqtt-secret"
    # Redacted output is plain data: it dumps as YAML for `validate-config`.
    assert "cam-secret" not in yaml.safe_dump(red)


def test_redacted_without_secrets_keeps_none() -> None:
    red = parse_config({"mqtt": {"host": "broker"}}).redacted()
    assert red["mqtt"]["password"] is None
    assert red["camera"] is None
    assert "base_dir" not in red


# ------------------------------------------------------------------- files


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("", encoding="utf-8")
    cfg = load_config(f)
    assert cfg.quality == parse_config({}).quality
    assert cfg.base_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int")]
)
def test_non_mapping_yaml_is_refused(tmp_path: Path, text: str, kind: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"top level must be a mapping, got {kind}") as err:
        load_config(f)
    assert str(f) in str(err.value)


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("quality: [min_face_px\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(f)
    assert str(f) in str(err.value)


def test_invalid_value_in_a_file_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text("quality:\n  min_face_px: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value) and "quality.min_face_px" in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent.yaml" if kind == "missing" else tmp_path
    with pytest.raises(ConfigError, match="cannot read config") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("camera:\n  type: v4l2\n  device: /dev/vid\xe9o0\n".encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(f)


def test_default_config_is_in_the_project_root() -> None:
    assert DEFAULT_CONFIG == PROJECT_ROOT / "config.yaml"


def test_the_service_config_install_writes_keeps_the_embedder_and_its_thresholds(
    tmp_path: Path,
) -> None:
    """install.sh --system renders systemd/config.yaml with config.yaml's embedder and the
    thresholds chosen for it (its own lines, run here with /etc replaced by a temp folder)."""
    root = Path(__file__).resolve().parent.parent
    script = (root / "install.sh").read_text()
    start = script.index("if [ ! -f /etc/maskgate/config.yaml ]; then")
    lines = script[start:].splitlines()[1:]
    render = "\n".join(lines[: next(i for i, x in enumerate(lines) if "chown" in x)])
    out = tmp_path / "config.yaml"
    render = f'ROOT="{root}"\n' + render.replace("/etc/maskgate/config.yaml", str(out))
    subprocess.run(["bash", "-euc", render], cwd=root, check=True)
    service = load_config(out)
    shipped = load_config(root / "config.yaml")
    assert service.models.embedder == shipped.models.embedder == "sface_int8"
    assert service.match == shipped.match
    assert service.resolve(service.models.manifest) == root / "models" / "manifest.yaml"
