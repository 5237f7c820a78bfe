"""config.yaml as validated pydantic models.

Every field carries a description and bounds; unknown keys are refused so a typo never
silently falls back to a default on a door lock.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

# The repository root: relative paths in config.yaml are resolved against the config file's
# folder, and the default config lives here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"


class ConfigError(ValueError):
    """config.yaml is missing, unreadable or invalid; the message names the key and reason."""


class _Strict(BaseModel):
    # Numbers and switches are Strict* types: YAML `threads: true` or `"2"` is an error, not 1 or 2.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Strict):
    manifest: Path = Field(
        Path("models/manifest.yaml"),
        description="Model manifest; relative paths resolve against the config file's folder.",
    )
    landmarker: str = Field(
        "face_landmarker", min_length=1, description="Manifest id of the face-mesh model."
    )
    detector: str | None = Field(
        "yunet",
        description="Manifest id of the second face detector that cross-checks the mesh; "
        "null disables it.",
    )
    # Not the shipped config.yaml's sface_int8: a config that names no embedder was written
    # for the float graph, and its thresholds belong to that graph.
    embedder: str = Field(
        "sface",
        min_length=1,
        description="Manifest id of the face embedder (match thresholds belong to one embedder).",
    )
    mask_classifier: str = Field(
        "mask_mobilenetv2",
        min_length=1,
        description="Manifest id of the mask / no-mask classifier.",
    )


class RuntimeConfig(_Strict):
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        ["tensorrt", "cuda", "cpu"],
        min_length=1,
        description="ONNX Runtime providers in order of preference; unavailable ones are skipped.",
    )
    threads: StrictInt = Field(
        2, ge=1, le=64, description="Intra-op threads per ONNX Runtime session."
    )
    trt_cache_dir: Path = Field(
        Path("trt-cache"),
        description="Where the TensorRT provider caches built engines (relative: in state_dir).",
    )
    trt_fp16: StrictBool = Field(True, description="Let the TensorRT provider build FP16 engines.")
    profile_dir: Path | None = Field(
        None,
        description="Write ONNX Runtime's per-operator profile of each model here (relative: in "
        "state_dir); off when null. `edge bench --profile` turns it on for one run.",
    )


class LandmarksConfig(_Strict):
    type: Literal["litert", "tasks"] = Field(
        "litert",
        description="Mesh backend: 'litert' runs the mesh model alone with LiteRT on a crop from "
        "the detector or the previous frame (needs models.detector); 'tasks' runs MediaPipe's "
        "Tasks FaceLandmarker graph with its own detector (edge/vision/landmarks.py).",
    )
    max_faces: StrictInt = Field(
        3,
        ge=1,
        le=10,
        description="Faces the mesh looks for in still photos; the largest one is used (the camera "
        "stream tracks one, cross-checked by the detector).",
    )
    min_detection_confidence: StrictFloat = Field(
        0.5, gt=0, lt=1, description="The Tasks graph's face detector (BlazeFace) score floor."
    )
    min_presence_confidence: StrictFloat = Field(
        0.5, gt=0, lt=1, description="Mesh presence score floor."
    )
    max_disagreement: StrictFloat = Field(
        0.3,
        gt=0,
        le=5,
        description="Mean distance between the mesh's and the detector's 5 points, in eye "
        "distances, above which the mesh is taken as misfitted and the detector's points align.",
    )
    detector_every: StrictInt = Field(
        5,
        ge=1,
        le=100,
        description="On the camera stream, the detector cross-checks a continuing track's mesh "
        "every this many frames (1: every frame); it always looks on a new track, a frame "
        "without a mesh, a jump, and after a check with a doubt (edge/vision/locate.py).",
    )


class MaskReuseConfig(_Strict):
    """When a track's mask verdict is reused instead of running the mask classifier again."""

    enabled: StrictBool = Field(
        True,
        description="On the camera stream, classify the mask once per track and reuse the "
        "verdict until the track is cut, its look changes or `max_frames` have passed.",
    )
    max_frames: StrictInt = Field(
        15,
        ge=1,
        le=1000,
        description="Classify again after this many frames of one track at the latest (15: "
        "about once a second at decision.active_fps).",
    )
    min_similarity: StrictFloat = Field(
        0.9,
        ge=-1,
        le=1,
        description="Classify again when the identity embedding's cosine to the frame last "
        "classified falls below this (a mask put on or taken off moves it further).",
    )
    # One track's frames: at most 0.028; a mask put on or taken off: at least 0.049
    # (bench/mask_reuse.py).
    max_lower_change: StrictFloat = Field(
        0.04,
        gt=0,
        le=1,
        description="Classify again when the lower face of the aligned crop (nose to chin) "
        "differs from the frame last classified by more than this (mean absolute difference "
        "of its CIELAB colours, 0-1).",
    )
    margin: StrictFloat = Field(
        0.3,
        ge=0,
        lt=1,
        description="Reuse only a confident verdict: its mask probability at least this far "
        "from match.mask_probability (an uncertain face is classified every frame).",
    )


class QualityConfig(_Strict):
    min_face_px: StrictInt = Field(
        64, ge=16, le=2000, description="Smallest accepted face width in pixels (mesh box)."
    )
    max_yaw_deg: StrictFloat = Field(
        35.0, gt=0, le=90, description="Largest accepted head turn left/right."
    )
    max_pitch_deg: StrictFloat = Field(
        30.0, gt=0, le=90, description="Largest accepted head tilt up/down."
    )
    min_sharpness: StrictFloat = Field(
        15.0,
        ge=0,
        le=10000,
        description="Smallest accepted variance of the Laplacian of the aligned 112×112 face.",
    )


class MatchConfig(_Strict):
    threshold_unmasked: StrictFloat = Field(
        0.40, ge=-1, le=1, description="Cosine similarity needed to accept an unmasked probe."
    )
    threshold_masked: StrictFloat = Field(
        0.40, ge=-1, le=1, description="Cosine similarity needed to accept a masked probe."
    )
    mask_probability: StrictFloat = Field(
        0.5, gt=0, lt=1, description="Mask probability above which a face counts as masked."
    )


class _CameraBase(_Strict):
    width: StrictInt | None = Field(
        None, ge=16, le=8192, description="Requested frame width (live sources)."
    )
    height: StrictInt | None = Field(
        None, ge=16, le=8192, description="Requested frame height (live sources)."
    )
    reconnect_s: StrictFloat = Field(
        2.0, gt=0, le=300, description="Wait before reopening a live source that dropped."
    )
    start_timeout_s: StrictFloat = Field(
        30.0,
        gt=0,
        le=600,
        description="The door reports ready only once the source delivered its first frame; "
        "a source without one within this time is a failed start (a slow USB camera takes a "
        "few seconds).",
    )


class V4L2Camera(_CameraBase):
    type: Literal["v4l2"] = "v4l2"
    device: str | StrictInt = Field(0, description="/dev/videoN path or camera index.")
    fps: StrictInt | None = Field(None, ge=1, le=240, description="Requested frame rate.")


class GStreamerCamera(_CameraBase):
    type: Literal["gstreamer"] = "gstreamer"
    pipeline: str = Field(
        ...,
        min_length=1,
        description="GStreamer pipeline ending in appsink (e.g. nvarguscamerasrc ... ! appsink).",
    )


class UrlCamera(_CameraBase):
    type: Literal["url"] = "url"
    url: SecretStr = Field(
        ..., description="rtsp:// or http(s):// stream URL (may hold credentials)."
    )


class FileCamera(_CameraBase):
    type: Literal["file"] = "file"
    path: Path = Field(..., description="Video file, played once at its own frame rate.")
    loop: StrictBool = Field(False, description="Start again at the end instead of stopping.")
    realtime: StrictBool = Field(True, description="Pace frames at the file's frame rate.")


class FolderCamera(_CameraBase):
    type: Literal["folder"] = "folder"
    path: Path = Field(..., description="Folder of images, played in name order.")
    fps: StrictFloat = Field(5.0, gt=0, le=240, description="Rate at which images are handed over.")
    loop: StrictBool = Field(False, description="Start again after the last image.")


CameraConfig = Annotated[
    V4L2Camera | GStreamerCamera | UrlCamera | FileCamera | FolderCamera,
    Field(discriminator="type"),
]


class MqttConfig(_Strict):
    host: str = Field(..., min_length=1, description="Broker host name or address.")
    port: StrictInt = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password (never logged).")
    tls: StrictBool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle for TLS (system CAs when unset).")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    client_id: str | None = Field(
        None, description="MQTT client id (default: maskgate-<device_id>)."
    )
    prefix: str = Field(
        "maskgate", min_length=1, pattern=r"^[^#+\s]+$", description="Topic prefix (no wildcards)."
    )
    device_id: str = Field(
        "door1",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="This door's id; all topics live under <prefix>/<device_id>/.",
    )
    keepalive_s: StrictInt = Field(30, ge=5, le=3600, description="MQTT keepalive.")
    connect_timeout_s: StrictFloat = Field(5.0, gt=0, le=120, description="Connect timeout.")
    snapshot: StrictBool = Field(False, description="Publish a JPEG snapshot with each decision.")
    discovery: StrictBool = Field(True, description="Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="HA discovery prefix.")


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of a base64 Ed25519 public key; ValueError naming what is wrong."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, an Ed25519 public key has 32")
    return raw


class SecurityConfig(_Strict):
    trusted_keys: list[str] = Field(
        [],
        description="Ed25519 public keys (base64 of the 32 raw bytes) whose signed commands "
        "(enroll, delete, sync, unlock) are obeyed.",
    )

    max_validity_s: StrictFloat = Field(
        30.0, gt=0, le=3600, description="Longest a signed request may stay valid (exp - iat)."
    )
    clock_skew_s: StrictFloat = Field(
        5.0, ge=0, le=300, description="Tolerated clock difference with the signer."
    )
    insecure_local_dev: StrictBool = Field(
        False,
        description="Accept unsigned commands. For a lab bench only: logged loudly at start.",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        # Checked here, so `validate-config` (the unit's ExecStartPre=) catches a bad key
        # instead of the door failing at start in a restart loop.
        for i, text in enumerate(keys):
            try:
                public_key_bytes(text)
            except ValueError as err:
                raise ValueError(f"trusted_keys[{i}] {text[:60]!r}: {err}") from None
        return keys


class LimitsConfig(_Strict):
    """Bounds on what one input may cost: photos from the CLI or MQTT, and MQTT requests."""

    max_image_pixels: StrictInt = Field(
        16_000_000,
        ge=10_000,
        le=100_000_000,
        description="Largest picture (width × height) decoded anywhere. Read from the file's "
        "header before decoding, so a small file declaring a huge picture is refused unread.",
    )
    max_image_file_bytes: StrictInt = Field(
        50 * 2**20,
        ge=2**16,
        le=2**30,
        description="Largest image file read from disk (photos on the command line, folders).",
    )
    max_request_pixels: StrictInt = Field(
        40_000_000,
        ge=10_000,
        le=1_000_000_000,
        description="Total pixels of the photos of one enroll request, all decoded together.",
    )
    max_request_s: StrictFloat = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest an enroll or sync request may work; past it the request fails "
        "and nothing of it is stored. Unlock, delete and list have their own lane and never wait "
        "behind it.",
    )


class StoreConfig(_Strict):
    path: Path = Field(
        Path("templates.db"), description="SQLite template store (relative: in state_dir)."
    )
    key_file: Path = Field(
        Path("template.key"),
        description="AES-256 key for templates at rest (0600; created on first start; relative: "
        "in state_dir). A systemd "
        "credential named `credential` takes precedence when present.",
    )
    credential: str = Field(
        "maskgate-template-key", min_length=1, description="systemd credential name of the key."
    )
    keep_crops: StrictBool = Field(
        True,
        description="Keep encrypted aligned crops of enrolled photos, so templates can be "
        "re-computed when the embedder changes.",
    )


class EnrollConfig(_Strict):
    masked_variants: StrictInt = Field(
        2,
        ge=0,
        le=8,
        description="Synthetic masked templates rendered from each unmasked enrollment photo "
        "(0 = none). On mfr2-dev two took masked-probe TAR@FAR=1e-3 from 0.938 to 0.969.",
    )
    variant_kinds: list[Literal["surgical", "n95", "kn95", "cloth"]] = Field(
        ["surgical", "n95", "kn95", "cloth"],
        min_length=1,
        description="Mask kinds to render, used in this order.",
    )


class LivenessConfig(_Strict):
    # Bounds measured with `python -m bench.pad_bounds` (see the README, "Presentation attacks").
    enabled: StrictBool = Field(
        True, description="Require a blink or 3-D head movement on one continuous track."
    )
    window_s: StrictFloat = Field(
        4.0, gt=0, le=60, description="How far back a blink or movement counts."
    )
    # Measured on the PAD clips: rendered turns and nods reach 0.046-0.116, prints and screens
    # stay at or below 0.029, held-still noise at 0.001.
    min_parallax: StrictFloat = Field(
        0.038,
        gt=0,
        le=1,
        description="Head movement counts when, between two frames of the track, the mesh "
        "points leave a plane-homography residual of which a rigid 3-D face explains at least "
        "this much (RMS, in units of the face's RMS radius): a print or screen moved, tilted "
        "or bent stays below it.",
    )
    max_pair_s: StrictFloat = Field(
        1.5,
        gt=0,
        le=60,
        description="Longest interval between the two frames compared: a head turns in about "
        "a second, a tracked mesh drifting over seconds is not a turn.",
    )
    # Pairs across a slideshow swap that would pass put at least 0.84 into one step.
    max_step_share: StrictFloat = Field(
        0.6,
        gt=0,
        le=1,
        description="Largest share of the plane residual one frame step may carry: a head "
        "turns over several frames, a swapped photo jumps at once.",
    )
    # Rendered blinks close to 0.14-0.61, attacks on one photo never below 0.88.
    blink_ratio: StrictFloat = Field(
        0.65,
        gt=0,
        lt=1,
        description="Both eyes' openings below this fraction of what the widest-open frame of "
        "the last blink_max_s predicts (carried over by the rest of the face) count as closed.",
    )
    # Rendered blinks keep the rest of the face within 0.045 (a turning blink included).
    blink_max_rigid: StrictFloat = Field(
        0.05,
        gt=0,
        le=1,
        description="Largest plane residual of the rest of the face while the eyes close: a "
        "blink is local, a photo bent or flipped moves the whole face.",
    )
    blink_max_s: StrictFloat = Field(
        1.0, gt=0, le=10, description="Longest closure that still counts as a blink."
    )


class TrackConfig(_Strict):
    """When consecutive frames are one face moving, and when they are a cut."""

    max_gap_s: StrictFloat = Field(
        0.5,
        gt=0,
        le=10,
        description="A face unseen this long ends its track (liveness and votes start again).",
    )
    # Compared consecutive live frames score at least 0.894, another photo at most 0.79.
    min_similarity: StrictFloat = Field(
        0.84,
        ge=-1,
        le=1,
        description="Lowest cosine between consecutive frames' embeddings of one track: a "
        "different photo of the same person scores lower.",
    )
    max_speed: StrictFloat = Field(
        5.0,
        gt=0,
        le=100,
        description="Fastest the face's centre may move, in face widths per second (a head "
        "at the door moves at most about 2).",
    )
    max_zoom: StrictFloat = Field(
        1.5,
        gt=0,
        le=100,
        description="Fastest the face's size may change, |ln(width ratio)| per second (someone "
        "stepping up to the camera: about 1).",
    )
    max_turn_rate: StrictFloat = Field(
        400.0,
        gt=0,
        le=3600,
        description="Fastest yaw or pitch change, degrees per second (a quick head turn peaks "
        "at a few hundred).",
    )


class DecisionConfig(_Strict):
    k: StrictInt = Field(3, ge=1, le=50, description="Matching frames needed ...")
    n: StrictInt = Field(
        5, ge=1, le=100, description="... among the last n frames of the same face."
    )
    cooldown_s: StrictFloat = Field(
        10.0, ge=0, le=3600, description="No second unlock for the same person within this time."
    )
    lockout_after: StrictInt = Field(
        5, ge=1, le=100, description="Failed good-quality attempts before a lockout."
    )
    lockout_s: StrictFloat = Field(30.0, gt=0, le=86400, description="First lockout length.")
    lockout_max_s: StrictFloat = Field(
        900.0, gt=0, le=86400, description="Longest lockout (each lockout doubles up to this)."
    )
    attempt_gap_s: StrictFloat = Field(
        3.0,
        gt=0,
        le=600,
        description="A face absent this long ends an attempt (a failed one counts once).",
    )
    active_fps: StrictFloat = Field(
        15.0, gt=0, le=120, description="Full-chain rate while a face is present."
    )
    idle_fps: StrictFloat = Field(
        3.0, gt=0, le=120, description="Landmarks-only rate while nobody is there."
    )
    track: TrackConfig = Field(
        default_factory=TrackConfig,
        description="When consecutive frames are one face (a track) and when they are a cut: "
        "votes and liveness evidence count within one track.",
    )


class DoorContactConfig(_Strict):
    line: StrictInt = Field(..., ge=0, le=1023, description="GPIO line of the door contact.")
    active_low: StrictBool = Field(True, description="Contact closed (door shut) reads low.")
    debounce_ms: StrictInt = Field(50, ge=0, le=5000, description="Debounce period.")


class RelayConfig(_Strict):
    type: Literal["mock", "gpiod"] = Field("mock", description="Relay backend.")
    chip: str = Field("/dev/gpiochip0", min_length=1, description="GPIO chip (gpiod).")
    line: StrictInt = Field(17, ge=0, le=1023, description="GPIO line driving the lock relay.")
    active_low: StrictBool = Field(False, description="The relay energises on a low level.")
    pulse_s: StrictFloat = Field(3.0, gt=0, le=60, description="How long the door stays unlocked.")
    door_contact: DoorContactConfig | None = Field(None, description="Optional door contact input.")
    mock_log: Path | None = Field(
        None, description="Mock relay: append each edge (time, level) to this JSON-lines file."
    )


class DaemonConfig(_Strict):
    state_dir: Path = Field(
        Path(".state"),
        description="Writable state (StateDirectory= under systemd); relative store paths and "
        "the event outbox live here.",
    )
    frame_stale_s: StrictFloat = Field(
        3.0, gt=0, le=300, description="Frames older than this stop the watchdog pings."
    )


class Config(_Strict):
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Which models to load.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Inference runtime.")
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig, description="Face mesh.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality gates.")
    match: MatchConfig = Field(default_factory=MatchConfig, description="Matching thresholds.")
    mask_reuse: MaskReuseConfig = Field(
        default_factory=MaskReuseConfig,
        description="Mask verdicts reused along a track on the camera stream.",
    )
    camera: CameraConfig | None = Field(None, description="Frame source; none for photo-only use.")
    mqtt: MqttConfig | None = Field(None, description="Broker; none disables MQTT.")
    security: SecurityConfig = Field(
        default_factory=SecurityConfig, description="Who may command this door."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Template store.")
    enroll: EnrollConfig = Field(default_factory=EnrollConfig, description="Enrollment.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Input bounds.")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="Unlock policy.")
    liveness: LivenessConfig = Field(default_factory=LivenessConfig, description="Liveness.")
    relay: RelayConfig = Field(default_factory=RelayConfig, description="Door-lock relay.")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="Service settings.")

    # Where the file was loaded from: relative paths resolve against it.
    base_dir: Path = Field(
        PROJECT_ROOT, exclude=True, description="Folder relative paths resolve against."
    )

    @model_validator(mode="after")
    def _thresholds_sane(self) -> Config:
        if self.match.threshold_masked > 0.95 or self.match.threshold_unmasked > 0.95:
            log.warning("a match threshold above 0.95 will reject almost everyone")
        if self.decision.k > self.decision.n:
            raise ValueError(
                f"decision.k ({self.decision.k}) cannot exceed decision.n ({self.decision.n})"
            )
        if self.decision.lockout_max_s < self.decision.lockout_s:
            raise ValueError("decision.lockout_max_s must be at least decision.lockout_s")
        if self.landmarks.type == "litert" and not self.models.detector:
            raise ValueError(
                "landmarks.type 'litert' finds new faces with models.detector: name one, or set "
                "landmarks.type: tasks"
            )
        return self

    def resolve(self, path: Path) -> Path:
        """A config path made absolute against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path)

    def state_path(self, path: Path) -> Path:
        """A state file's path: relative paths live in daemon.state_dir."""
        return path if path.is_absolute() else (self.resolve(self.daemon.state_dir) / path)

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with secrets masked, safe to log or print."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the key's dotted path and the reason."""
    lines = [f"{source}: {err.error_count()} problem(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> Config:
    """Validate already-parsed YAML; raise ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    if "base_dir" in data:
        raise ConfigError(f"{source}: base_dir: Extra inputs are not permitted")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(
            f"{source}: {bad_keys[0]!r}: keys must be names, not {type(bad_keys[0]).__name__}"
        )
    try:
        return Config(**data, base_dir=base_dir or PROJECT_ROOT)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: Path | str | None = None) -> Config:
    """Load and validate config.yaml (the project's default when path is None)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {err.start}): is this the config file?"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)
