"""What every fake API shares: an HTTP server on 127.0.0.1 (a free port), served from a daemon
thread, that hands each request to one function. Tests only.

    server = LocalServer(answer, "fake-x")   # answer(method, path, headers, raw body)
                                              #   -> (status, response headers, body bytes)
    server.url                                # http://127.0.0.1:<port>
    server.stop()
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Answer = Callable[[str, str, object, bytes], tuple[int, dict, bytes]]


class LocalServer:
    def __init__(self, answer: Answer, name: str):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answer))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(answer: Answer):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, headers, body = answer(self.command, self.path, self.headers, raw)
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

    return Handler
