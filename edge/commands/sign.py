"""keygen and sign: make a signing key, and sign (optionally publish) requests for a door.

For servers and the README: the door obeys enroll, delete, sync and unlock only when they are
signed by a key in `security.trusted_keys`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.commands.common import CommandError
from edge.mqtt.messages import PAYLOAD_MODELS
from edge.mqtt.signing import generate_keypair, load_private_key, sign_request
from edge.mqtt.topics import ACTIONS, Topics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing door requests")
    p.add_argument("--out", required=True, type=Path, help="private key file to write (PEM)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=run_keygen)

    p = sub.add_parser("sign", help="sign a request for a door; print it or publish it")
    p.add_argument("--key", required=True, type=Path, help="private key (PEM) from keygen")
    p.add_argument("--device", required=True, help="the door's mqtt.device_id")
    p.add_argument("--action", required=True, choices=ACTIONS, help="what to ask")
    p.add_argument("--prefix", default="maskgate", help="mqtt.prefix (default: maskgate)")
    p.add_argument("--payload", help="JSON payload file, or - for stdin (default: {})")
    p.add_argument(
        "--image",
        action="append",
        type=Path,
        default=[],
        help="enroll: add this photo to payload.images (repeatable)",
    )
    p.add_argument("--id", help="correlation id (default: random)")
    p.add_argument(
        "--validity", type=float, default=10.0, help="seconds the request stays valid (10)"
    )
    p.add_argument("--publish", metavar="HOST:PORT", help="also publish it to this broker")
    p.add_argument("--username", help="broker user (with --publish)")
    p.add_argument(
        "--password-env",
        default="MQTT_PASSWORD",
        help="environment variable holding the broker password (default: MQTT_PASSWORD)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (with --publish)")
    p.add_argument("--ca-file", type=Path, help="CA bundle for --tls")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="with --publish: wait up to S seconds for the door's reply and print it",
    )
    p.set_defaults(run=run_sign)


def run_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    pem, public = generate_keypair()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        # 0600 from the start: the key is never readable by others, not even briefly.
        fd = os.open(out, flags, 0o600)
    except FileExistsError:
        raise CommandError(f"{out} exists; use --force to overwrite it") from None
    except OSError as err:
        raise CommandError(f"{out}: cannot write: {err.strerror or err}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(public)
    print(
        f"private key written to {out}; add the public key above to security.trusted_keys",
        file=sys.stderr,
    )
    return 0


def _read_payload(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload is None:
        payload: Any = {}
    else:
        try:
            text = (
                sys.stdin.read() if args.payload == "-" else Path(args.payload).read_text("utf-8")
            )
        except (OSError, UnicodeDecodeError) as err:
            raise CommandError(f"{args.payload}: cannot read payload: {err}") from None
        try:
            payload = json.loads(text)
        except ValueError as err:
            raise CommandError(f"{args.payload}: not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise CommandError("the payload must be a JSON object")
    if args.image:
        if args.action != "enroll":
            raise CommandError("--image is for --action enroll")
        images = payload.setdefault("images", [])
        if not isinstance(images, list):
            raise CommandError("payload.images must be a list")
        for path in args.image:
            try:
                images.append(base64.b64encode(path.read_bytes()).decode("ascii"))
            except OSError as err:
                raise CommandError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        PAYLOAD_MODELS[args.action].model_validate(payload)
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in e["loc"]) or "payload"
        raise CommandError(f"invalid {args.action} payload: {where}: {e['msg']}") from None
    return payload


def run_sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        topics = Topics(args.prefix, args.device)
    except ValueError as err:
        raise CommandError(str(err)) from None
    payload = _read_payload(args)
    topic = topics.request(args.action)
    try:
        envelope = sign_request(
            key,
            args.device,
            topic,
            payload,
            validity_s=args.validity,
            request_id=args.id or uuid.uuid4().hex,
        )
    except ValueError as err:
        raise CommandError(str(err)) from None
    text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    print(f"topic: {topic}", file=sys.stderr)
    if not args.publish:
        print(text)
        return 0
    reply = _publish(args, topics, topic, text, envelope["id"])
    print(text if reply is None else json.dumps(reply))
    return 0 if reply is None or reply.get("status") == "ok" else 1


def _publish(
    args: argparse.Namespace, topics: Topics, topic: str, text: str, request_id: str
) -> dict[str, Any] | None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, _, port_text = args.publish.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise CommandError(f"--publish {args.publish!r}: expected HOST:PORT") from None
    if not host or not 0 < port < 65536:
        raise CommandError(f"--publish {args.publish!r}: expected HOST:PORT")

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if args.username:
        client.username_pw_set(args.username, os.environ.get(args.password_env))
    if args.tls:
        client.tls_set(ca_certs=str(args.ca_file) if args.ca_file else None)
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(reply, dict) and reply.get("id") == request_id:
            got.update(reply)
            done.set()

    connack: dict[str, Any] = {}
    connected = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        connack["reason"] = reason
        connected.set()

    client.on_message = on_message
    client.on_connect = on_connect
    try:
        rc = client.connect(host, port, keepalive=30)
    except OSError as err:
        raise CommandError(f"cannot reach {host}:{port}: {err}") from None
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise CommandError(f"cannot connect to {host}:{port}: {mqtt.error_string(rc)}")
    client.loop_start()
    try:
        if not connected.wait(10):
            raise CommandError(f"{host}:{port} did not answer the connection within 10 s")
        if connack["reason"].is_failure:
            raise CommandError(f"{host}:{port} refused the connection: {connack['reason']}")
        if args.wait > 0:
            # Subscribed before the request goes out, so the reply cannot be missed.
            client.subscribe(topics.reply(args.action), qos=1)
        info = client.publish(topic, text, qos=1)
        try:
            info.wait_for_publish(timeout=10)
        except (RuntimeError, ValueError) as err:
            raise CommandError(f"publish failed: {err}") from None
        if not info.is_published():
            raise CommandError(f"{host}:{port} did not acknowledge the request within 10 s")
        if args.wait <= 0:
            return None
        if not done.wait(args.wait):
            raise CommandError(f"no reply on {topics.reply(args.action)} within {args.wait:g} s")
        return got
    finally:
        client.disconnect()
        client.loop_stop()
