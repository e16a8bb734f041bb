"""A real OpenAI-compatible HTTP server on localhost whose answers a test scripts.

For what llama.cpp's server cannot be made to do on demand: answer 429 with `Retry-After`, fail
with a 5xx, send a body that is not JSON, answer too slowly, or answer a chat request with a
chosen text. It is Python's `http.server` in a thread, so the client under test goes through its
real sockets, headers and timeouts. Every request is recorded with its arrival time, read when
the stub has it: never before the client sent it, however loaded the machine.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Reply:
    """One scripted answer: `body` (a dict is sent as JSON, a str as it is) after `delay_s`."""

    status: int = 200
    body: dict | str = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


@dataclasses.dataclass
class Request:
    path: str
    body: Any
    arrived: float  # time.monotonic()
    arrived_at: float  # time.time(), to hold against a Retry-After's HTTP-date


def chat_reply(content: str) -> Reply:
    """A `/chat/completions` answer whose message is `content`."""
    return Reply(body={"choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]})


class OpenAIStub:
    """Serves `{base_url}/...` until `stop()` (or the end of a `with` block).

    Each request takes the next of `replies` while any are left; after that, a chat request is
    answered with `chat(prompt)` (the last message's content) and any other request with
    `default`. Change `chat`, `default` or `replies` at any time.
    """

    def __init__(self, replies: list[Reply] | None = None,
                 chat: Callable[[str], str] | None = None, default: Reply | None = None):
        self.replies = list(replies or [])
        self.chat = chat
        self.default = default or Reply(status=404, body={"error": "not scripted"})
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.http.handle_error = lambda request, address: None  # a client that gave up waiting
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        # A short poll interval: `stop()` waits up to one for the serving loop to notice.
        self._thread = threading.Thread(target=self.http.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> OpenAIStub:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()  # ends the waits of slow replies
        self.http.shutdown()
        self.http.server_close()
        self._thread.join(timeout=10)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests, in order of arrival."""
        times = [request.arrived for request in self.requests]
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]

    def _reply_to(self, path: str, body: Any) -> Reply:
        with self._lock:
            self.requests.append(Request(path, body, time.monotonic(), time.time()))
            if self.replies:
                return self.replies.pop(0)
        if self.chat is not None and path.endswith("/chat/completions"):
            return chat_reply(self.chat(body["messages"][-1]["content"]))
        return self.default

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self._answer(None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(json.loads(self.rfile.read(length)) if length else None)

            def _answer(self, body: Any) -> None:
                reply = stub._reply_to(self.path, body)
                if reply.delay_s and stub._stopping.wait(reply.delay_s):
                    return
                payload = (reply.body if isinstance(reply.body, str)
                           else json.dumps(reply.body)).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        return Handler
