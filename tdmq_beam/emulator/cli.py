"""``tdmq-emulator``: run the local TDMQ for MQTT emulator from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from tdmq_beam.emulator.config import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    FAULT_KINDS,
    Acl,
    EmulatorConfig,
    FaultConfig,
)
from tdmq_beam.emulator.server import Emulator

__all__ = ["main", "parse_config"]

_READY_LINE = "tdmq-emulator serving "  # how the line that tells the emulator serves begins


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdmq-emulator",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A local TDMQ for MQTT: an MQTT 3.1.1/5 broker with the HTTP data-plane and cloud APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP(S) API port, 0 for a free one")
    parser.add_argument("--mqtt-port", type=int, default=1883, help="MQTT port, 0 for a free one")
    parser.add_argument(
        "--user", action="append", type=_user, metavar="NAME:PASSWORD",
        help="a user (repeatable); without one, user0:secret0, as in the documentation's examples",
    )  # fmt: skip
    parser.add_argument("--allow-anonymous", action="store_true", help="accept MQTT connections without a username")
    parser.add_argument("--acl", metavar="FILE", help="JSON ACL file: first matching rule wins")
    parser.add_argument("--tps", type=float, default=0.0, help="data-plane requests/s before 429, 0 for no limit")
    parser.add_argument("--secret-id", default=DEFAULT_SECRET_ID, help="cloud API SecretId")
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY, help="cloud API SecretKey")
    parser.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID, help="instance id")
    parser.add_argument("--cloud-rate", type=float, default=20.0, help="cloud API requests/s per action")
    parser.add_argument(
        "--offline-action", action="append", default=[], metavar="ACTION",
        help="answer this cloud API action with ActionOffline (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--deny-action", action="append", default=[], metavar="ACTION",
        help="answer this cloud API action with AuthFailure.UnauthorizedOperation (repeatable)",
    )  # fmt: skip
    parser.add_argument("--max-packet-size", type=int, default=1024 * 1024, help="largest MQTT packet in bytes")
    parser.add_argument("--max-payload", type=int, default=1024 * 1024, help="largest HTTP publish body in bytes")
    parser.add_argument(
        "--max-in-flight", "--max-inflight", dest="max_inflight", type=int, default=16,
        help="QoS 1/2 window per MQTT 3.x client, and the Receive Maximum announced to MQTT 5 clients",
    )  # fmt: skip
    parser.add_argument(
        "--retry-interval", type=float, default=120.0,
        help="seconds before an unacknowledged QoS 1/2 message is resent while connected, 0 for never",
    )  # fmt: skip
    parser.add_argument("--max-subscriptions", type=int, default=30, help="topic filters per client")
    parser.add_argument("--max-connections", type=int, default=10_000, help="MQTT connections at once")
    parser.add_argument(
        "--max-connections-per-address", type=int, default=0, help="MQTT connections at once from one address, 0: any"
    )
    parser.add_argument(
        "--max-queued-bytes", type=int, default=64 * 1024 * 1024,
        help="payload bytes queued per session (and group backlog) before the oldest are dropped",
    )  # fmt: skip
    parser.add_argument(
        "--max-session-expiry", type=int, default=7 * 86400,
        help="seconds a persistent session outlives its connection at most (MQTT 3.1.1 sessions too)",
    )  # fmt: skip
    parser.add_argument(
        "--max-retained-bytes", type=int, default=64 * 1024 * 1024, help="payload bytes of retained messages kept"
    )
    parser.add_argument(
        "--max-write-buffer", type=int, default=8 * 1024 * 1024,
        help="bytes buffered for one connection past which QoS 0 messages to it are dropped",
    )  # fmt: skip
    parser.add_argument("--topic-alias-maximum", type=int, default=64, help="topic aliases a client may use")
    parser.add_argument(
        "--max-keepalive", type=int, default=0,
        help="cap on client keep-alive, imposed on MQTT 5 clients with Server Keep Alive, 0 for none",
    )  # fmt: skip
    parser.add_argument(
        "--max-cloud-body", type=int, default=10 * 1024 * 1024, help="largest cloud API request body in bytes"
    )
    parser.add_argument(
        "--stored-messages", type=int, default=100_000,
        help="accepted messages kept for the cloud API's message query, 0 for none",
    )  # fmt: skip
    parser.add_argument(
        "--stored-message-age", type=float, default=72 * 3600.0, help="seconds a stored message is kept"
    )
    parser.add_argument("--mqtts-port", type=int, help="MQTT over TLS port (needs --tls-cert), 0 for a free one")
    parser.add_argument("--ws-port", type=int, help="MQTT over WebSocket port (path /mqtt), 0 for a free one")
    parser.add_argument("--wss-port", type=int, help="MQTT over secure WebSocket port (needs --tls-cert)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of HTTP publishes that fail (0..1)")
    parser.add_argument(
        "--fault-kinds", default=",".join(FAULT_KINDS), help=f"comma-separated, among {','.join(FAULT_KINDS)}"
    )
    parser.add_argument("--fault-seed", type=int, default=None, help="seed for repeatable faults")
    parser.add_argument("--fault-delay", type=float, default=30.0, help="seconds a 'delay' fault holds a request")
    parser.add_argument(
        "--event-loss", type=float, default=0.0, help="share of client events ($events/...) not delivered (0..1)"
    )
    parser.add_argument(
        "--event-delay", type=float, default=0.0, help="client events delivered after a random 0..N s (out of order)"
    )
    parser.add_argument("--event-seed", type=int, default=None, help="seed for repeatable event loss and delay")
    parser.add_argument("--tls-cert", help="serve HTTPS (and MQTTS, WSS) with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    parser.add_argument("--client-ca", help="with TLS: verify client certificates against this CA (mTLS)")
    parser.add_argument("--log-level", default="WARNING", help="logging level")
    parser.add_argument(
        "--detach", action="store_true",
        help="serve in the background: return once serving (or not), with the ready line and its pid",
    )  # fmt: skip
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[EmulatorConfig, str]:
    """Parses command-line arguments into a config and a log level."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    return _config(parser, args), args.log_level


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EmulatorConfig:
    """The emulator's configuration from its parsed arguments (a mistake is the parser's error)."""
    try:
        config = EmulatorConfig(
            host=args.host,
            http_port=args.http_port,
            mqtt_port=args.mqtt_port,
            users=dict(args.user) if args.user else {"user0": "secret0"},
            allow_anonymous=args.allow_anonymous,
            acl=Acl.from_file(args.acl) if args.acl else Acl(),
            tps=args.tps,
            secret_id=args.secret_id,
            secret_key=args.secret_key,
            instance_id=args.instance_id,
            cloud_rate=args.cloud_rate,
            offline_actions=frozenset(args.offline_action),
            max_packet_size=args.max_packet_size,
            max_payload=args.max_payload,
            max_inflight=args.max_inflight,
            retry_interval=args.retry_interval,
            max_subscriptions=args.max_subscriptions,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
            max_queued_bytes=args.max_queued_bytes,
            max_session_expiry=args.max_session_expiry,
            max_retained_bytes=args.max_retained_bytes,
            max_write_buffer=args.max_write_buffer,
            topic_alias_maximum=args.topic_alias_maximum,
            max_keepalive=args.max_keepalive,
            max_cloud_body=args.max_cloud_body,
            stored_messages=args.stored_messages,
            stored_message_age=args.stored_message_age,
            mqtts_port=args.mqtts_port,
            ws_port=args.ws_port,
            wss_port=args.wss_port,
            cloud_denied_actions=frozenset(args.deny_action),
            faults=FaultConfig(
                rate=args.fault_rate,
                kinds=tuple(kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()),
                seed=args.fault_seed,
                delay_seconds=args.fault_delay,
            ),
            event_loss=args.event_loss,
            event_delay=args.event_delay,
            event_seed=args.event_seed,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _detach() -> int | None:
    """Forks the emulator off; in the parent, waits until it serves or fails and returns the
    command's exit status (None in the emulator, which goes on).

    Until it serves, the emulator's stdout and stderr go to the parent through a pipe, so the
    ready line, the start-up warnings and a start-up error ("port in use") reach the shell before
    the command returns; after that they go to /dev/null (run it in the foreground for its logs).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()  # not stopped by the shell's Ctrl-C, nor by the end of the terminal's session
        for stream in (1, 2):
            os.dup2(write_end, stream)
        os.close(write_end)
        return None
    os.close(write_end)
    with os.fdopen(read_end, "rb") as started:
        told = started.read()  # until the emulator serves and lets go of the pipe, or exits
    # Told by what it printed, not by whether it has exited yet: a failing emulator closes the
    # pipe a moment before the kernel lets waitpid see it gone.
    if not any(line.startswith(_READY_LINE.encode()) for line in told.splitlines()):
        _, status = os.waitpid(pid, 0)
        sys.stderr.buffer.write(told)
        return os.waitstatus_to_exitcode(status) or 1
    sys.stdout.buffer.write(told.rstrip(b"\n") + f" pid={pid}\n".encode())
    return 0


def _let_go_of_the_terminal() -> None:
    """A detached emulator's stdout and stderr, once it serves: /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (1, 2):
        os.dup2(null, stream)
    os.close(null)


async def _serve(config: EmulatorConfig, *, detached: bool = False) -> None:
    emulator = Emulator(config)
    try:
        await emulator.start()
    except OSError as exc:  # a port in use (1883 wherever mosquitto runs), an address not on this machine
        await emulator.stop()
        print(f"tdmq-emulator: error: cannot listen on {config.host}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the ready line: a Ctrl-C right after it stops cleanly
        loop.add_signal_handler(signum, stop.set)
    listeners = " ".join(f"{name}={url}" for name, url in emulator.urls().items())
    print(f"{_READY_LINE}{listeners}", flush=True)
    if detached:
        _let_go_of_the_terminal()
    await stop.wait()
    await emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    config = _config(parser, args)
    if args.detach and (status := _detach()) is not None:
        return status
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve = _serve(config, detached=args.detach)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve)
    else:
        uvloop.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
