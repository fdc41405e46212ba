"""A local OpenAI-compatible chat-completions server for tests (127.0.0.1, a free port).

Behaviour is scripted: ``script`` is a list of (status, headers, delay_s) consumed one per
request before normal replies; a normal reply's content is ``reply(user_prompt)``.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeOpenAI:
    def __init__(self, reply: Callable[[str], str], delay_s: float = 0.0):
        self.reply, self.delay_s = reply, delay_s
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    step = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": "not found"}})
                    if step is not None:
                        status, headers, delay = step
                        time.sleep(delay)
                        if status != 200:
                            return self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
                    time.sleep(server.delay_s)
                    user = body["messages"][-1]["content"]
                    self._send(200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.reply(user)}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                    })
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def rating_from_prompt(user: str) -> str:
    """Reply with the rating the test planted in the conversation ("RATE=<text>")."""
    import re

    m = re.search(r"RATE=(\S+)", user)
    return (m.group(1).replace("_", " ") if m else "7") + "\nBecause the test said so."
