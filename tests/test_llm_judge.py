"""The `llm` judge (delphi-style detection and fuzzing) against real HTTP servers.

Prompts and parsing are checked offline; batching, ordering and failures against the scripted
`openai_stub` server, whose answers are known; the protocol end to end against llama-cpp-python's
server with SmolLM2-135M (`llm_fixtures`), too small to judge well, so only the shape and the
failure contract are checked there.
"""

from __future__ import annotations

import re

import pytest
from llm_server import free_port
from openai_stub import OpenAIStub

from crate_jax.interp.explanations.explanation import BackendError, Explanation, SimulationFailure
from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient
from crate_jax.interp.explanations.llm_judge import (
    BATCH_SIZE,
    LLMJudge,
    detection_prompt,
    fuzzing_prompt,
    parse_judgements,
)

pytest_plugins = ["llm_fixtures"]  # the `client` fixture: a client of a real llama.cpp server

CONTEXTS = [["My", " cat", " sleeps", "\n"], ["Dogs", " bark", "."], ["The", " cat", "."]]
MARKS = [[False, True, True, False], [True, False, False], [False, False, True]]


# ---------------------------------------------------------------- offline: prompts and parsing

def test_detection_prompt_shows_the_explanation_and_numbered_contexts_last_token_marked():
    messages = detection_prompt("cats", CONTEXTS)
    assert messages[0]["role"] == "system" and "0 if it does not" in messages[0]["content"]
    assert "last token of each example is marked" in messages[0]["content"]
    roles = [message["role"] for message in messages[1:]]
    assert roles == ["user", "assistant"] * ((len(roles) - 1) // 2) + ["user"]
    request = messages[-1]["content"]
    assert request.startswith("Explanation: cats\n")
    assert ("Example 1: My cat sleeps<<\\n>>\nExample 2: Dogs bark<<.>>\n"
            "Example 3: The cat<<.>>\n") in request
    assert "list of 3 numbers" in request
    for shot, answer in zip(messages[1:-1:2], messages[2:-1:2], strict=True):
        shown = len(re.findall(r"^Example \d+:", shot["content"], re.MULTILINE))
        assert len(parse_judgements(answer["content"], shown)) == shown


def test_fuzzing_prompt_marks_each_run_of_highlighted_tokens():
    messages = fuzzing_prompt("cats", CONTEXTS, MARKS)
    assert "<< and >>" in messages[0]["content"]
    request = messages[-1]["content"]
    assert ("Example 1: My<< cat sleeps>>\\n\nExample 2: <<Dogs>> bark.\n"
            "Example 3: The cat<<.>>\n") in request
    with pytest.raises(ValueError, match="3 highlight flags for 4 tokens"):
        fuzzing_prompt("cats", CONTEXTS[:1], [[True, False, False]])
    with pytest.raises(ValueError, match="2 highlight lists for 3 contexts"):
        fuzzing_prompt("cats", CONTEXTS, MARKS[:2])


@pytest.mark.parametrize("text", [
    "[1, 0, 1]",
    "Sure! Here is my answer: [1,0,1]. Hope this helps.",
    '["1", "0", "1"]',
    "[True, False, true]",
    "[[1, 0, 1]]",
    "Examples [a] to [c]: [1.0, 0, 1]",
    "1, 0, 1",
    " 1 0 1.\n",
])
def test_parse_judgements_reads_the_formats_small_models_write(text):
    assert parse_judgements(text, 3) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("text, message", [
    ("The neuron fires on cats.", "no list of 0s and 1s"),
    ("[1, 0]", "expected 3 judgements .* got 2"),
    ("[1, 0, 1, 1]", "expected 3 judgements .* got 4"),
    ("[1, 2, 0]", "must be 0 or 1, got 2"),
    ("[0.5, 1, 0]", "must be 0 or 1, got 0.5"),
    ("1, 0, 1 and 1", "no list of 0s and 1s"),
    ("[]", "no list of 0s and 1s"),
])
def test_parse_judgements_fails_instead_of_guessing(text, message):
    with pytest.raises(SimulationFailure, match=message):
        parse_judgements(text, 3)


# ---------------------------------------------------------------- a scripted server

def _examples(request: str) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", request, re.MULTILINE)


def _answers_cat(request: str) -> str:
    """A chatty but correct judge of "cats": whether every marked run (detection's last token,
    fuzzing's highlights) is a cat."""
    answers = []
    for example in _examples(request):
        marked = re.findall(r"<<(.*?)>>", example)
        answers.append(int(bool(marked) and all(run.strip().startswith("cat")
                                                for run in marked)))
    return f"My answer: {answers}"


def _stub_client(stub: OpenAIStub) -> OpenAICompatibleClient:
    return OpenAICompatibleClient(stub.base_url, "scripted", api_key_env=None, max_retries=0)


def test_a_correctly_answered_batch_gives_the_answered_values():
    with OpenAIStub(chat=_answers_cat) as stub:
        judge = LLMJudge(_stub_client(stub))
        detected = judge.detect(Explanation("cats"), [["My", " cat"], ["Dogs", " bark"],
                                                      ["The", " cat"]])
        fuzzed = judge.fuzz(Explanation("cats"), CONTEXTS,
                            [[False, True, False, False], [True, False, False],
                             [False, True, False]])
    assert detected == [1.0, 0.0, 1.0] and fuzzed == [1.0, 0.0, 1.0]
    assert judge.threshold == 1.0
    asked = stub.requests[0].body
    assert asked["temperature"] == 0.0 and asked["seed"] == 0
    assert asked["messages"][0]["role"] == "system"


def test_more_contexts_than_a_batch_go_out_in_several_requests_and_come_back_in_order():
    contexts = [["A", f" cat{i}" if i % 3 == 0 else f" dog{i}"] for i in range(2 * BATCH_SIZE + 2)]
    texts = ["".join(context[:-1]) + f"<<{context[-1]}>>" for context in contexts]
    expected = [1.0 if i % 3 == 0 else 0.0 for i in range(len(contexts))]
    with OpenAIStub(chat=_answers_cat) as stub:
        assert LLMJudge(_stub_client(stub)).detect(Explanation("cats"), contexts) == expected
        shuffled = sorted(_examples(r.body["messages"][-1]["content"]) for r in stub.requests)
        stub.requests.clear()
        kept = LLMJudge(_stub_client(stub), seed=None).detect(Explanation("cats"), contexts)
        in_order = sorted(_examples(r.body["messages"][-1]["content"]) for r in stub.requests)
    assert kept == expected
    batches = [texts[:BATCH_SIZE], texts[BATCH_SIZE:2 * BATCH_SIZE], texts[2 * BATCH_SIZE:]]
    assert in_order == sorted(batches)
    # Seeded: the same sizes and contexts, mixed across batches (values above in caller order).
    assert sorted(map(len, shuffled)) == [2, BATCH_SIZE, BATCH_SIZE]
    assert sorted(sum(shuffled, [])) == sorted(texts) and shuffled != sorted(batches)


def test_an_unreadable_answer_is_a_failure_never_zeros():
    with OpenAIStub(chat=lambda request: "The neuron fires on cats.") as stub:
        judge = LLMJudge(_stub_client(stub))
        with pytest.raises(SimulationFailure, match="no list of 0s and 1s in the answer: "
                                                    "'The neuron fires on cats.'"):
            judge.detect(Explanation("cats"), CONTEXTS)
        stub.chat = lambda request: "[1, 0]"  # one judgement short
        with pytest.raises(SimulationFailure, match="expected 3 judgements"):
            judge.fuzz(Explanation("cats"), CONTEXTS, MARKS)


def test_no_contexts_need_no_request_and_a_dead_server_is_a_backend_error():
    client = OpenAICompatibleClient(f"http://127.0.0.1:{free_port()}/v1", "m",
                                    api_key_env=None, timeout_s=2, max_retries=0)
    assert LLMJudge(client).detect(Explanation("cats"), []) == []
    with pytest.raises(BackendError, match="after 1 attempts"):
        LLMJudge(client).detect(Explanation("cats"), CONTEXTS)
    assert client.attempt_count == 1


# ---------------------------------------------------------------- a real server on localhost

class _RecordsAnswers(OpenAICompatibleClient):
    """The real server; keeps every chat answer, so a test can hold the judge's result or
    failure against what the model actually said."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: list[str] = []

    def chat_completion(self, messages, **params):
        response = super().chat_completion(messages, **params)
        self.answers.append(response["choices"][0]["message"]["content"])
        return response


@pytest.mark.parametrize("kind", ["detect", "fuzz"])
def test_judge_answers_one_0_or_1_per_context_or_fails_quoting_the_model(client, kind):
    """Either one value in {0, 1} per context, or a failure that quotes an answer that holds
    no readable list: SmolLM2-135M often cannot follow the format; it must never become 0s."""
    recording = _RecordsAnswers(client.base_url, client.model, api_key_env=None,
                                timeout_s=client.timeout_s, max_retries=0)
    contexts = CONTEXTS * 2  # two batches: BATCH_SIZE and one more
    judge = LLMJudge(recording)
    try:
        if kind == "detect":
            values = judge.detect(Explanation("cats"), contexts)
        else:
            values = judge.fuzz(Explanation("cats"), contexts, MARKS * 2)
    except SimulationFailure as failure:
        assert any(repr(answer[:200]) in str(failure) for answer in recording.answers), (
            failure, recording.answers)
        return
    assert len(values) == len(contexts) and set(values) <= {0.0, 1.0}
    assert len(recording.answers) == 2  # one request per batch
