#!/usr/bin/env python3
"""Publish one business event to JetStream and print the stream's acknowledgement.

    scripts/publish-event.py SUBJECT JSON
    scripts/publish-event.py subscription.updated '{"user_id": "demo-user", "plan": "enterprise"}'
    scripts/publish-event.py usage.updated '{"user_id": "demo-user", "attributes": {"seats": 5}}'
    scripts/publish-event.py principal.revoked '{"user_id": "demo-user", "not_before": "2030-01-01T00:00:00Z"}'
    echo '{"user_id": "demo-user", "plan": null}' | scripts/publish-event.py subscription.updated -

For the local stack (`make up`): no `nats` CLI needed, only the Python standard library. It
speaks the NATS text protocol: subscribes to a reply inbox, publishes the event with that inbox
as reply subject, and waits (at most --timeout seconds) for the answer. JetStream answers with
{"stream": "BUSINESS_EVENTS", "seq": N}; when no stream listens on the subject (heimdall has
not created BUSINESS_EVENTS yet) the server answers "no responders" instead.

Exit status: 0 when the event is stored in a stream, 1 when it is not (no responders, a
JetStream error, a timeout), 2 for bad arguments or a server it cannot talk to. Plain TCP only
(no TLS); --user/--password or --token for a server that wants them.
"""

import argparse
import json
import os
import secrets
import socket
import sys
import time
from urllib.parse import urlsplit

DEFAULT_SERVER = "nats://127.0.0.1:4222"


class ProtocolError(Exception):
    pass


class Connection:
    """A blocking NATS connection that reads whole protocol lines and message bodies."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            raise ProtocolError("the server closed the connection")
        self.buf += chunk

    def line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def body(self, size, deadline):
        while len(self.buf) < size + 2:
            self._fill(deadline)
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Publish one business event to NATS JetStream and print the acknowledgement.",
        epilog="Subjects heimdall reads by default: subscription.updated, usage.updated, principal.revoked.",
    )
    parser.add_argument("subject", help="e.g. subscription.updated")
    parser.add_argument("json", help="the event as a JSON object, or - to read it from stdin")
    parser.add_argument(
        "--server",
        default=os.environ.get("NATS_URL", DEFAULT_SERVER).split(",")[0].strip(),
        help=f"nats://host:port (default: $NATS_URL, else {DEFAULT_SERVER})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack (default 5)")
    parser.add_argument("--user", help="user name, with --password")
    parser.add_argument("--password", help="password, with --user")
    parser.add_argument("--token", help="authentication token")
    args = parser.parse_args(argv)
    if not args.subject or any(c.isspace() for c in args.subject) or args.subject.startswith("$"):
        parser.error(f"`{args.subject}` is not a subject to publish events on")
    if not 0 < args.timeout <= 60:
        parser.error("--timeout must be within (0, 60] seconds")
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    return args


def server_address(url):
    parts = urlsplit(url if "://" in url else "nats://" + url)
    if parts.scheme not in ("nats", ""):
        raise ValueError(f"only nats:// servers are supported (no TLS), not `{url}`")
    return parts.hostname or "127.0.0.1", parts.port or 4222


def read_payload(arg):
    text = sys.stdin.read() if arg == "-" else arg
    try:
        event = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the event is not JSON: {e}") from None
    if not isinstance(event, dict):
        raise ValueError("the event must be a JSON object")
    return json.dumps(event, separators=(",", ":")).encode()


def publish(args, payload):
    host, port = server_address(args.server)
    deadline = time.monotonic() + args.timeout
    conn = Connection(host, port, args.timeout)
    try:
        info_line = conn.line(deadline)
        if not info_line.startswith("INFO "):
            raise ProtocolError(f"expected INFO from the server, got `{info_line[:80]}`")
        info = json.loads(info_line[5:])
        if info.get("tls_required"):
            raise ProtocolError("the server requires TLS, which this script does not speak")

        connect = {
            "verbose": False,
            "pedantic": False,
            "lang": "python",
            "version": "1",
            "name": "publish-event",
            # Headers and no_responders: a publish nobody answers comes back as a 503 status
            # at once instead of a silent timeout.
            "headers": True,
            "no_responders": True,
        }
        if args.user is not None:
            connect.update(user=args.user, **{"pass": args.password})
        if args.token is not None:
            connect["auth_token"] = args.token
        inbox = "_INBOX." + secrets.token_hex(11)
        conn.send(
            b"CONNECT " + json.dumps(connect).encode() + b"\r\n"
            + f"SUB {inbox} 1\r\n".encode()
            + f"PUB {args.subject} {inbox} {len(payload)}\r\n".encode()
            + payload + b"\r\n"
            + b"PING\r\n"
        )

        while True:
            line = conn.line(deadline)
            op = line.split(" ", 1)[0].upper()
            if op == "PING":
                conn.send(b"PONG\r\n")
            elif op in ("PONG", "+OK", "INFO"):
                continue
            elif op == "-ERR":
                raise ProtocolError(f"server error: {line[5:].strip()}")
            elif op == "MSG":
                # MSG <subject> <sid> [reply-to] <#bytes>
                size = int(line.split()[-1])
                return "ack", conn.body(size, deadline)
            elif op == "HMSG":
                # HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                fields = line.split()
                header_size, total = int(fields[-2]), int(fields[-1])
                data = conn.body(total, deadline)
                status = data[:header_size].split(b"\r\n", 1)[0].decode("utf-8", "replace")
                if " 503" in status:
                    return "no-responders", b""
                return "ack", data[header_size:]
            else:
                raise ProtocolError(f"unexpected line from the server: `{line[:80]}`")
    finally:
        conn.close()


def main(argv):
    args = parse_args(argv)
    try:
        payload = read_payload(args.json)
    except ValueError as e:
        print(f"publish-event: {e}", file=sys.stderr)
        return 2
    try:
        kind, body = publish(args, payload)
    except TimeoutError:
        print(f"publish-event: no answer within {args.timeout:g}s from {args.server}", file=sys.stderr)
        return 1
    except (OSError, ProtocolError, ValueError) as e:
        print(f"publish-event: {args.server}: {e}", file=sys.stderr)
        return 2

    if kind == "no-responders":
        print(
            f"publish-event: no responders: no JetStream stream stores `{args.subject}`. "
            "heimdall creates BUSINESS_EVENTS once it has connected to NATS (or check the subject).",
            file=sys.stderr,
        )
        return 1
    text = body.decode("utf-8", "replace")
    try:
        ack = json.loads(text)
    except json.JSONDecodeError:
        print(f"publish-event: unexpected answer: {text}", file=sys.stderr)
        return 1
    print(json.dumps(ack))
    if not isinstance(ack, dict) or "error" in ack or "stream" not in ack:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
