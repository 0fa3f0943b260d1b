"""The do-nothing baseline: an authz plugin on Python's stdlib http.server that allows everything.

Run: python bench/null_plugin.py SOCKET. Threaded, HTTP/1.1 keep-alive, like any minimal plugin.
Benchmarks only — never used by tests as a stand-in for the real plugin.
"""

from __future__ import annotations

import os
import socketserver
import sys
from http.server import BaseHTTPRequestHandler

REPLY = b'{"Allow": true}'
ACTIVATE = b'{"Implements": ["authz"]}'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = ACTIVATE if self.path == "/Plugin.Activate" else REPLY
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("local", 0)  # http.server expects a (host, port) client address


def main() -> None:
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    with UnixServer(path, Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
