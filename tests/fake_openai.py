"""A local OpenAI-compatible chat-completions server for tests (127.0.0.1, a free port).

Behaviour is scripted: ``script`` is a list of (status, headers, delay_s) consumed one per
request before normal replies; a normal reply's content is ``reply(user_prompt)``. ``status``
may also name a fault (:data:`FAULTS`) that no status code expresses: a reset connection, a 200
whose body is cut off, a 200 with no choices. With ``api_key`` set, any other key gets a 401
(an endpoint that rejects the key rejects every request).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

# Faults a script step can name instead of a status code.
FAULTS = {
    "reset": "close the connection without a reply",
    "malformed": "200 with a truncated JSON body",
    "empty_choices": "200 with an empty choices list",
    "hang": "hold the connection for delay_s, then close it without a reply",
}


class FakeOpenAI:
    def __init__(self, reply: Callable[[str], str], delay_s: float = 0.0, api_key: str | None = None):
        self.reply, self.delay_s, self.api_key = reply, delay_s, api_key
        self.script: list[tuple[int | str, dict[str, str], float]] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.answered: set[str] = set()  # prompts that got a normal reply
        self.repeats = 0                 # requests for a prompt that had already been answered
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
                    server.repeats += body["messages"][-1]["content"] in server.answered
                    step = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": "not found"}})
                    if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._send(401, {"error": {"message": "Incorrect API key provided",
                                                          "code": "invalid_api_key"}})
                    if step is not None:
                        status, headers, delay = step
                        time.sleep(delay)
                        if status in ("reset", "hang"):
                            return self._drop()
                        if status == "malformed":
                            return self._send_raw(200, b'{"id": "cmpl-1", "choices": [{"index": 0, "mess')
                        if status == "empty_choices":
                            return self._send(200, {"id": "cmpl-1", "object": "chat.completion", "created": 0,
                                                    "model": body["model"], "choices": []})
                        if status != 200:
                            return self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
                    time.sleep(server.delay_s)
                    user = body["messages"][-1]["content"]
                    if self._send(200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.reply(user)}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                    }):
                        with server._lock:
                            server.answered.add(user)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:  # the client is gone already
                    pass

            def _send(self, status, payload, headers=None) -> bool:
                return self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status, data, headers=None) -> bool:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return True
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    return False

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


def prompts_sent(server: FakeOpenAI) -> list[str]:
    """The user prompt of every request the server received, in arrival order."""
    return [body["messages"][-1]["content"] for body in server.requests]
