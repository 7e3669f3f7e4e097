"""A real HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats, with faults.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses`` (OpenAI) and ``POST /v1/messages``
(Anthropic). The answer to a request is ``"Answer to: <last user message>"`` (or ``answer(body)``),
cut to ``max_tokens`` words with finish reason ``length`` when longer, so truncation is real.
Token counts are whitespace-separated words. Log-probabilities are returned when requested.

Faults are queued with :meth:`FakeLLMServer.inject` and consumed one per request, in order: an
error status (with headers such as ``retry-after-ms``), a delay, a dropped connection, a malformed
JSON body, or a response without log-probabilities. Every request is logged with its headers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeLLMServer", "Fault", "RecordedRequest"]


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or before) answering it normally."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    #: Seconds to wait before answering (past the client's timeout: a slow response).
    delay: float = 0.0
    #: Close the connection without sending anything.
    drop: bool = False
    #: Answer 200 with a body that is not valid JSON.
    malformed: bool = False
    #: Answer normally but leave log-probabilities out even when requested.
    no_logprobs: bool = False
    #: Answer normally but without the "usage" object (some compatible servers do).
    no_usage: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None


def _words(text: str) -> list[str]:
    return text.split()


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class FakeLLMServer:
    """Start with :meth:`start` (or ``with``); ``openai_base_url`` / ``anthropic_base_url`` point at it.

    ``api_key``: when set, requests without that key (``Authorization: Bearer`` or ``x-api-key``)
    get 401. ``cached_tokens``: prompt tokens reported as read from a provider-side cache.
    """

    def __init__(
        self,
        *,
        answer: Callable[[dict[str, Any]], str] | None = None,
        api_key: str | None = None,
        cached_tokens: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.answer = answer or (
            lambda body: "Answer to: " + _last_user(body.get("messages") or body.get("input") or [])
        )
        self.api_key = api_key
        self.cached_tokens = cached_tokens
        self.delay = delay
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> FakeLLMServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each following request consumes one, in order."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.cached_tokens = 0
        self.api_key = None
        self.delay = 0.0

    def calls(self, path: str | None = None) -> int:
        """Requests received (optionally only those to ``path``), faulty ones included."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    # ------------------------------------------------------------------ used by the handler
    def _next(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Fault | None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            self.requests.append(RecordedRequest(path, headers, body, fault))
        return fault

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeLLMServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        owner = self.owner
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = owner._next(self.path, headers, body)
        delay = owner.delay + (fault.delay if fault else 0.0)
        if delay:
            owner._wait(delay)
        if fault is not None and fault.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if owner.api_key is not None:
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            if given != owner.api_key:
                self._send(401, {"error": {"type": "authentication_error", "message": "invalid api key"}})
                return
        if fault is not None and fault.status is not None:
            payload = (
                fault.body
                if fault.body is not None
                else {"error": {"type": "fault", "message": f"injected HTTP {fault.status}"}}
            )
            self._send(fault.status, payload, fault.headers)
            return
        if fault is not None and fault.malformed:
            self._send(200, '{"id": "broken", "choices": [{"message": ', fault.headers)
            return
        routes = {
            "/v1/chat/completions": lambda: self._chat(body, fault),
            "/v1/responses": lambda: self._responses(body, fault),
            "/v1/messages": lambda: self._messages(body),
        }
        route = routes.get(self.path)
        if route is None:
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        payload = route()
        if fault is not None and fault.no_usage:
            payload.pop("usage")
        self._send(200, payload)

    # ------------------------------------------------------------------ wire formats
    def _answer(self, body: dict[str, Any], limit: int) -> tuple[list[str], bool]:
        words = _words(self.owner.answer(body))
        return words[:limit], len(words) > limit

    @staticmethod
    def _prompt_tokens(messages: list[dict[str, Any]], system: str = "") -> int:
        return len(_words(system)) + sum(len(_words(str(m.get("content", "")))) for m in messages)

    @staticmethod
    def _logprobs(words: list[str], top: int) -> list[dict[str, Any]]:
        out = []
        for i, word in enumerate(words):
            alternatives = [{"token": word, "logprob": -0.1 * i, "bytes": None}]
            alternatives += [{"token": f"alt{j}", "logprob": -5.0 - j, "bytes": None} for j in range(1, top)]
            out.append(
                {"token": word, "logprob": -0.1 * i, "bytes": None, "top_logprobs": alternatives[:top]}
            )
        return out

    def _chat(self, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 10_000
        words, cut = self._answer(body, int(limit))
        logprobs = None
        if body.get("logprobs") and not (fault and fault.no_logprobs):
            logprobs = {"content": self._logprobs(words, int(body.get("top_logprobs") or 0)), "refusal": None}
        prompt = self._prompt_tokens(body.get("messages", []))
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": f"{body.get('model')}-2024-07-18",
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                    "finish_reason": "length" if cut else "stop",
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(words),
                "total_tokens": prompt + len(words),
                "prompt_tokens_details": {"cached_tokens": self.owner.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }

    def _responses(self, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
        words, cut = self._answer(body, int(body.get("max_output_tokens") or 10_000))
        content: dict[str, Any] = {"type": "output_text", "text": " ".join(words), "annotations": []}
        if "message.output_text.logprobs" in (body.get("include") or []) and not (
            fault and fault.no_logprobs
        ):
            content["logprobs"] = self._logprobs(words, int(body.get("top_logprobs") or 0))
        prompt = self._prompt_tokens(body.get("input", []))
        return {
            "id": "resp_fake",
            "object": "response",
            "model": f"{body.get('model')}-2025-06-10",
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant", "content": [content]},
            ],
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": self.owner.cached_tokens},
                "output_tokens": len(words) + 3,
                "output_tokens_details": {"reasoning_tokens": 3},
                "total_tokens": prompt + len(words) + 3,
            },
        }

    def _messages(self, body: dict[str, Any]) -> dict[str, Any]:
        words, cut = self._answer(body, int(body.get("max_tokens") or 10_000))
        prompt = self._prompt_tokens(body.get("messages", []), str(body.get("system", "")))
        cached = min(self.owner.cached_tokens, prompt)
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": "max_tokens" if cut else "end_turn",
            "stop_sequence": None,
            # Anthropic reports cached reads outside input_tokens.
            "usage": {
                "input_tokens": prompt - cached,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0,
                "output_tokens": len(words),
            },
        }

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to do
