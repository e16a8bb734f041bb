"""The HTTP client's failure policy against a scripted server on localhost (tests/openai_stub.py):
what llama.cpp's server cannot be made to do on demand (429 with Retry-After, 5xx, a body that
is not JSON, an answer slower than the timeout). tests/test_llm_backend.py runs the client
against a real llama.cpp server.

Waits are checked on the wait the client chose (`_RecordsDelays`), exactly; the clock only shows
that the retry went out no sooner, a bound a busy machine cannot break (it only adds delay).
"""

from __future__ import annotations

import email.utils
import math
import time

import pytest
from openai_stub import OpenAIStub, Reply, chat_reply

from crate_jax.interp.explanations.explanation import BackendError
from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient

MESSAGES = [{"role": "user", "content": "hi"}]


class _RecordsDelays(OpenAICompatibleClient):
    """Keeps each wait it chose before a retry, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delays: list[float] = []

    def retry_delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        delay = super().retry_delay_s(retry, retry_after_s)
        self.delays.append(delay)
        return delay


def _client(stub: OpenAIStub, **options) -> _RecordsDelays:
    options = {"timeout_s": 60, "max_retries": 3, "backoff_s": 0.01, **options}
    return _RecordsDelays(stub.base_url, "scripted", api_key_env=None, **options)


def _content(response: dict) -> str:
    return response["choices"][0]["message"]["content"]


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_429_waits_as_long_as_retry_after_says_then_succeeds(form):
    """The retry goes out no sooner than Retry-After says, and the client chose to wait no
    longer than that plus its jitter (at most half the backoff)."""
    not_before = math.floor(time.time()) + 2  # the HTTP-date form has whole seconds
    retry_after = ("1" if form == "seconds"
                   else email.utils.formatdate(not_before, usegmt=True))
    with OpenAIStub([Reply(429, {"error": "slow down"}, {"Retry-After": retry_after}),
                     chat_reply("ok")]) as stub:
        client = _client(stub)
        assert _content(client.chat_completion(MESSAGES)) == "ok"
    assert client.attempt_count == len(stub.requests) == 2
    (delay,) = client.delays
    (waited,) = stub.gaps()
    assert waited >= delay
    jitter = client.backoff_s / 2
    if form == "seconds":
        assert 1 <= delay <= 1 + jitter, delay
    else:  # the date was 1 to 2 s away when the client read it; 10 ms for the wall clock's
        # slewing against the monotonic clock that `sleep` follows
        assert stub.requests[1].arrived_at >= not_before - 0.01
        assert delay <= 2 + jitter, delay


def test_a_retry_after_beyond_the_limit_stops_at_once_and_says_when_to_rerun():
    with OpenAIStub([Reply(429, {"error": "quota"}, {"Retry-After": "3600"})]) as stub:
        client = _client(stub)
        with pytest.raises(BackendError, match=rf"{stub.base_url}/chat/completions.*HTTP 429.*"
                                               r"Retry-After: 3600 s, more than the 60 s"):
            client.chat_completion(MESSAGES)
    assert client.delays == []  # no wait at all, not even a short one
    assert client.attempt_count == len(stub.requests) == 1


def test_server_errors_are_retried_until_an_answer_comes():
    with OpenAIStub([Reply(500, "oops"), Reply(502, "bad gateway"), Reply(503, "busy"),
                     chat_reply("ok")]) as stub:
        client = _client(stub)
        assert _content(client.chat_completion(MESSAGES)) == "ok"
    assert client.attempt_count == len(stub.requests) == 4


def test_server_errors_every_time_fail_after_the_counted_attempts_naming_the_url():
    with OpenAIStub(default=Reply(503, "busy")) as stub:
        client = _client(stub, max_retries=2)
        with pytest.raises(BackendError, match=rf"POST {stub.base_url}/chat/completions failed "
                                               r"after 3 attempts; last error: HTTP 503: 'busy'"):
            client.chat_completion(MESSAGES)
    assert client.attempt_count == len(stub.requests) == 3


@pytest.mark.parametrize("body, error", [
    ("<html>Bad Gateway</html>", "answered with something that is not JSON"),
    ('{"choices": [{"message": {"content": "cut off', "answered with something that is not JSON"),
    ({"object": "error"}, "has no 'choices'; is this an OpenAI-compatible server"),
], ids=["html", "cut_json", "no_choices"])
def test_a_body_that_is_not_an_answer_is_a_backend_error_not_retried(body, error):
    with OpenAIStub(default=Reply(200, body)) as stub:
        client = _client(stub)
        with pytest.raises(BackendError, match=error) as raised:
            client.chat_completion(MESSAGES)
    assert stub.base_url in str(raised.value)
    assert client.attempt_count == len(stub.requests) == 1


def test_an_answer_slower_than_the_timeout_fails_after_the_counted_retries_naming_the_url():
    """The answer would come 2000 times later than the timeout (it never does: the stub drops
    it on exit), so giving up well before it shows the timeout, whatever the load."""
    slow_answer_s = 600
    with OpenAIStub(default=Reply(delay_s=slow_answer_s, body={"choices": [{}]})) as stub:
        client = _client(stub, timeout_s=0.3, max_retries=1)
        started = time.monotonic()
        with pytest.raises(BackendError, match=rf"{stub.base_url}/chat/completions failed after "
                                               r"2 attempts; last error: .*timed out.*"
                                               r"timeout_s=0.3 long enough"):
            client.chat_completion(MESSAGES)
        assert time.monotonic() - started < slow_answer_s / 10
    assert client.attempt_count == len(stub.requests) == 2


def test_backoff_waits_are_jittered_within_their_bounds():
    """Equal jitter: the k-th wait lies in [b/2, b] for b = backoff_s * 2**(k-1), so clients
    that failed together do not retry together, and none retries sooner than half its backoff."""
    with OpenAIStub([Reply(503, "busy")] * 3 + [chat_reply("ok")]) as stub:
        client = _client(stub, backoff_s=0.2, jitter_seed=0)
        assert _content(client.chat_completion(MESSAGES)) == "ok"
    assert len(client.delays) == len(stub.gaps()) == 3
    for retry, (delay, waited) in enumerate(zip(client.delays, stub.gaps(), strict=True),
                                            start=1):
        ceiling = 0.2 * 2 ** (retry - 1)
        assert ceiling / 2 <= delay <= ceiling and waited >= delay, (retry, delay, waited)

    def delays(client):
        return [client.retry_delay_s(retry) for retry in (1, 2, 3) for _ in range(20)]

    seeded = delays(_client(stub, backoff_s=0.2, jitter_seed=7))
    assert seeded == delays(_client(stub, backoff_s=0.2, jitter_seed=7))  # reproducible
    assert seeded != delays(_client(stub, backoff_s=0.2, jitter_seed=8))
    for retry in (1, 2, 3):
        drawn = seeded[20 * (retry - 1):20 * retry]
        ceiling = 0.2 * 2 ** (retry - 1)
        assert all(ceiling / 2 <= delay <= ceiling for delay in drawn)
        assert len(set(drawn)) == 20  # jittered, not one fixed wait


def test_retry_after_is_the_floor_of_a_jittered_wait():
    """A server's Retry-After is never undercut; the jitter on top (at most half the backoff)
    spreads the threads that were all told the same time."""
    client = OpenAICompatibleClient("http://127.0.0.1:1/v1", "m", backoff_s=0.4, jitter_seed=0)
    waits = [client.retry_delay_s(1, retry_after_s=2.0) for _ in range(20)]
    assert all(2.0 <= wait <= 2.2 for wait in waits) and len(set(waits)) == 20
