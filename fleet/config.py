"""The fleet service's settings (fleet.yaml): registry, broker, signing key, timings."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictFloat,
    StrictInt,
    ValidationError,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: StrictInt = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="Broker user of the fleet.")
    password: SecretStr | None = Field(None, description="Broker password (never logged).")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle for TLS (system CAs when unset).")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    client_id: str | None = Field(
        None, max_length=64, description="MQTT client id (default: maskgate-fleet-<pid>)."
    )
    prefix: str = Field("maskgate", min_length=1, description="Topic prefix the doors use.")
    keepalive_s: StrictInt = Field(30, ge=5, le=3600, description="MQTT keepalive.")


class TimingConfig(_Strict):
    request_validity_s: StrictFloat = Field(
        20.0,
        gt=0,
        le=3600,
        description="How long a signed request stays valid; at most the doors' "
        "security.max_validity_s.",
    )
    resend_s: StrictFloat = Field(
        4.0,
        gt=0,
        le=600,
        description="A door not confirming this long after a request is sent "
        "the next one (requests are idempotent toward the expected set).",
    )
    max_resend_s: StrictFloat = Field(
        60.0,
        gt=0,
        le=3600,
        description="Each unconfirmed resend waits twice as long as the one before, up to this.",
    )
    max_syncs_in_flight: StrictInt = Field(
        50,
        ge=1,
        le=100000,
        description="Full syncs (large) outstanding at once across the fleet; more doors wait "
        "their turn, so a roll-out to hundreds of doors does not flood the broker.",
    )
    reconcile_every_s: StrictFloat = Field(
        0.25, gt=0, le=60, description="How often doors are compared with the registry."
    )
    max_incremental: StrictInt = Field(
        20,
        ge=0,
        le=1000,
        description="Up to this many person changes go to a door as enroll/delete requests; "
        "more (or an unknown door state) get one full sync.",
    )
    flush_every_s: StrictFloat = Field(
        1.0,
        gt=0,
        le=60,
        description="How often door states and events are written to the registry.",
    )


class FleetConfig(_Strict):
    registry: Path = Field(Path("fleet.db"), description="Registry SQLite file.")
    key_file: Path = Field(
        Path("fleet-key.pem"), description="The fleet's Ed25519 signing key (PEM, mode 0600)."
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="The site's broker.")
    timing: TimingConfig = Field(default_factory=TimingConfig, description="Timings.")
    door_config: Path | None = Field(
        None,
        description="A door's config.yaml whose models embed photos on the server "
        "(default: the project's config.yaml).",
    )
    base_dir: Path = Field(
        Path("."), description="Relative paths are taken from here (the config file's folder)."
    )

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base_dir / path


class FleetConfigError(ValueError):
    """fleet.yaml is missing or invalid; the message names the file and the field."""


def load_fleet_config(path: Path | None) -> FleetConfig:
    """fleet.yaml (relative paths from its folder), or defaults in the current folder."""
    if path is None:
        return FleetConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise FleetConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise FleetConfigError(f"{path}: not YAML: {err}") from None
    if not isinstance(data, dict):
        raise FleetConfigError(f"{path}: expected a mapping at the top")
    data.setdefault("base_dir", str(Path(path).resolve().parent))
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in e["loc"])
        raise FleetConfigError(f"{path}: {where}: {e['msg']}") from None
