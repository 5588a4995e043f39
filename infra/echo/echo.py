#!/usr/bin/env python3
"""A tiny upstream for the local heimdall stack.

Answers any method on any path with the request it received, as JSON:

    {"method": "GET", "path": "/x?y=1", "headers": {"x-user-id": "...", ...}}

Header names are lower-cased; a header sent more than once is joined with ", ".
Standard library only. Usage: echo.py [--host 127.0.0.1] [--port 8081]
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "heimdall-echo"
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        self._drain_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers}, indent=2
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self) -> None:
        """Reads and discards the request body so the connection can be reused."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                self.rfile.read(size + 2)  # chunk data and its CRLF
        length = int(self.headers.get("content-length") or 0)
        if length > 0:
            self.rfile.read(length)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write(f"echo: {self.address_string()} {fmt % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True
    print(f"echo: listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
