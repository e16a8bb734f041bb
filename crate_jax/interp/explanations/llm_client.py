"""A small HTTP client for OpenAI-compatible servers (OpenAI, vLLM, llama.cpp's server).

Standard library only, so the `llm` backend adds no runtime dependency. It owns the failure
policy of the backend: connection errors, timeouts, 429 and 5xx are retried with exponential
backoff and jitter (so that the threads of a pool that failed together do not retry together),
never sooner than a server's `Retry-After`; any other 4xx is the request's fault and is not
retried. When retries run out, or a server asks for a longer wait than a run should sit idle, the
caller gets a `BackendError` that names the URL and says what to check, which stops the pipeline
run (finished neurons stay on disk and a rerun resumes).

A `threading.BoundedSemaphore` caps the number of requests in flight from one client, whichever
threads they come from: the pipeline may share one client across a thread pool.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

from crate_jax.interp.explanations.explanation import BackendError

logger = logging.getLogger(__name__)

_BODY_PREVIEW_CHARS = 200
_MAX_RETRY_AFTER_S = 60.0


class RequestRejected(BackendError):
    """The server answered with a 4xx other than 429: the request itself is wrong (unknown model,
    unsupported parameter, prompt too long). Retrying cannot help; `status` is the HTTP code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _RetryableError(Exception):
    """Internal: one attempt failed in a way that a later attempt may not."""

    def __init__(self, cause: str, retry_after_s: float | None = None):
        super().__init__(cause)
        self.retry_after_s = retry_after_s


class OpenAICompatibleClient:
    """Calls `{base_url}/chat/completions` and `{base_url}/completions`.

    `base_url` includes the API prefix, as in OpenAI's SDK: `https://api.openai.com/v1` or
    `http://127.0.0.1:8080/v1`. The API key is read from the environment variable `api_key_env`
    on every request (so it can be set after construction and never sits in a config or a log);
    when it is unset or `api_key_env` is None no `Authorization` header is sent, which is what
    local servers expect. `max_retries` counts attempts after the first, so a request is tried at
    most `max_retries + 1` times; `retry_delay_s` says how long it waits before each retry, its
    jitter drawn from a generator seeded with `jitter_seed` (None: from the OS).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 3, backoff_s: float = 1.0,
                 max_concurrency: int = 4, jitter_seed: int | None = None):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self._in_flight = threading.BoundedSemaphore(max_concurrency)
        self._count_lock = threading.Lock()
        self._attempt_count = 0
        self._jitter = random.Random(jitter_seed)

    @property
    def attempt_count(self) -> int:
        """HTTP attempts made so far by this client, retries included (all threads)."""
        with self._count_lock:
            return self._attempt_count

    def retry_delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry `retry` (1 for the first). With b = backoff_s *
        2**(retry-1): uniform in [b/2, b] ("equal jitter": spread out, yet never much sooner than
        the backoff), or after a server's `Retry-After` of r seconds, uniform in [r, r + b/2]."""
        half = self.backoff_s * 2 ** (retry - 1) / 2
        floor = half if retry_after_s is None else retry_after_s
        return floor + self._jitter.uniform(0, half)

    def chat_completion(self, messages: Sequence[Mapping[str, str]],
                        **params: Any) -> dict[str, Any]:
        """POST `/chat/completions`; `params` (temperature, max_tokens, seed, ...) go into the
        body as given. Returns the decoded response, whose `choices` is a non-empty list."""
        body = {"model": self.model, "messages": list(messages), **params}
        return self._post_json("/chat/completions", body)

    def completion(self, prompt: str, **params: Any) -> dict[str, Any]:
        """POST `/completions` (the legacy text endpoint). Pass `logprobs=K, echo=True` to get
        the top-K log-probabilities of every prompt token back under `choices[0].logprobs`."""
        body = {"model": self.model, "prompt": prompt, **params}
        return self._post_json("/completions", body)

    def list_models(self) -> dict[str, Any]:
        """GET `/models`: a cheap liveness check."""
        return self._request_json("GET", "/models", None)

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._request_json("POST", path, body)
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list) or not choices:
            raise BackendError(
                f"response from {self.base_url}{path} has no 'choices'; is this an "
                f"OpenAI-compatible server? Body starts: {_preview(json.dumps(response))}")
        return response

    def _request_json(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        last_cause, retry_after = "no attempt made", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.retry_delay_s(attempt, retry_after)
                logger.warning("retrying %s in %.2f s (attempt %d of %d): %s", url, delay,
                               attempt + 1, self.max_retries + 1, last_cause)
                time.sleep(delay)
            try:
                raw = self._attempt(method, url, data)
            except _RetryableError as error:
                last_cause, retry_after = str(error), error.retry_after_s
                if retry_after is not None and retry_after > _MAX_RETRY_AFTER_S:
                    raise BackendError(
                        f"{method} {url} answered {last_cause} with Retry-After: "
                        f"{retry_after:.0f} s, more than the {_MAX_RETRY_AFTER_S:.0f} s this "
                        "client waits (a rate limit or an exhausted quota); rerun after that "
                        "time, finished neurons are kept") from None
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise BackendError(
                    f"{url} answered with something that is not JSON; is base_url the API "
                    f"prefix (e.g. http://host:port/v1)? Body starts: {_preview(raw)}") from None
        raise BackendError(
            f"{method} {url} failed after {self.max_retries + 1} attempts; last error: "
            f"{last_cause}. Is the server at {self.base_url} running and reachable, and is "
            f"timeout_s={self.timeout_s} long enough for it?")

    def _attempt(self, method: str, url: str, data: bytes | None) -> str:
        """One HTTP round trip under the concurrency limit; the decoded body on 2xx."""
        request = urllib.request.Request(url, data=data, method=method,
                                         headers=self._headers(data is not None))
        with self._in_flight:
            with self._count_lock:
                self._attempt_count += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as error:
                body = _read_error_body(error)
                if error.code == 429 or error.code >= 500:
                    raise _RetryableError(f"HTTP {error.code}: {_preview(body)}",
                                          _retry_after_s(error.headers)) from None
                raise RequestRejected(
                    f"{method} {url} was rejected with HTTP {error.code} (not retried; check "
                    f"the model name {self.model!r}, the request parameters and the prompt "
                    f"length against the server's context). Body starts: {_preview(body)}",
                    status=error.code) from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError) as error:
                reason = getattr(error, "reason", None) or error
                raise _RetryableError(f"{type(reason).__name__}: {reason}") from None

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers


def _read_error_body(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return ""


def _retry_after_s(headers: Any) -> float | None:
    """The `Retry-After` header as seconds from now, in either of its forms (RFC 9110 10.2.3):
    a number of seconds or an HTTP-date; None when absent or unreadable."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates are
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _preview(text: str) -> str:
    return repr(text[:_BODY_PREVIEW_CHARS])
