"""The `llm` explainer and simulator: a language model behind an OpenAI-compatible endpoint.

Follows Bills et al. 2023 ("Language models can explain neurons in language models"), without
their few-shot examples:

* The explainer shows the neuron's records one token per line as `token<TAB>activation` (0-10)
  and asks the model to finish "the main thing this neuron does is find ...".
* The simulator, given only that explanation, predicts an activation 0-10 for each token of
  unseen text. Two ways to ask:
  - `logprobs` ("all at once" in the paper): one `/completions` request per sequence whose prompt
    lists every token followed by a tab and the placeholder `unknown`. With `echo=True` the
    server returns the top log-probabilities at every prompt position; at each placeholder the
    prediction is the expected value over the number tokens 0-10 among them.
  - `json`: a chat request per sequence asking for a JSON list of integers, one per token.
  `auto` uses `logprobs` and falls back to `json` for good when the server does not return
  prompt log-probabilities (OpenAI's chat-only models, servers without `echo`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.explanation import (
    MAX_NORMALIZED_ACTIVATION,
    Explanation,
    SimulationFailure,
    normalized_activations,
)
from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient, RequestRejected
from crate_jax.interp.explanations.thread_pool import map_in_threads

EXPLANATION_PREFIX = "the main thing this neuron does is find"
PLACEHOLDER = "unknown"
_NUMBER_TOKENS = {str(value): value for value in range(MAX_NORMALIZED_ACTIVATION + 1)}
_PREVIEW_CHARS = 200

# Kept short: llama-cpp-python's server spends ~0.1 s per prompt token on prompt logprobs.
_TASK = (
    "A neuron in a language model responds to particular tokens. Lines read "
    "token<TAB>activation, the activation an integer from 0 (none) to 10 (strongest); most are 0.")

SimulationMode = Literal["auto", "logprobs", "json"]


class ExplanationFailure(SimulationFailure):
    """The explainer answered with nothing usable (empty text). A subclass of
    `SimulationFailure` so the pipeline records it per neuron instead of stopping the run."""


class _NoPromptLogprobs(SimulationFailure):
    """The server did not return log-probabilities for the prompt tokens."""


def display_token(token: str) -> str:
    """The token as shown in a prompt: tabs and newlines escaped so one token stays one line."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(
        "\t", "\\t")


def explanation_prompt(records: Sequence[ActivationRecord], max_activation: float) -> str:
    """The explainer's request: the task, then each record between <start> and <end>."""
    blocks = []
    for number, record in enumerate(records, start=1):
        levels = normalized_activations(record.activations, max_activation)
        lines = [f"{display_token(t)}\t{level}" for t, level in zip(record.tokens, levels,
                                                                      strict=True)]
        blocks.append(f"Excerpt {number}:\n<start>\n" + "\n".join(lines) + "\n<end>")
    return (f"{_TASK}\n\n" + "\n\n".join(blocks) + "\n\nLook at the tokens with high "
            "activations and say in a few words what they have in common.")


def clean_explanation(completion: str) -> str:
    """The first sentence of the completion, without a repeated prefix, quotes or final period."""
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"^(explanation:\s*)?" + re.escape(EXPLANATION_PREFIX) + r"\s*:?", "", text,
                  flags=re.IGNORECASE).strip()
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return text.strip(" \"'`*.")


class LLMExplainer:
    """Explains a neuron by asking the model behind `client` to finish `EXPLANATION_PREFIX`.

    `api="chat"` works with every OpenAI-compatible server; `api="completions"` continues the
    prefix directly, which suits base (non-chat) models. Temperature 0 and a fixed `seed` keep
    reruns comparable where the server honours them.
    """

    def __init__(self, client: OpenAICompatibleClient, api: Literal["chat", "completions"] = "chat",
                 max_tokens: int = 48, temperature: float = 0.0, seed: int | None = 0):
        if api not in ("chat", "completions"):
            raise ValueError(f"unknown api {api!r} (expected 'chat' or 'completions')")
        self.client = client
        self.api = api
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            self.sampling["seed"] = seed

    def explain(self, records: Sequence[ActivationRecord], max_activation: float) -> Explanation:
        prompt = explanation_prompt(records, max_activation)
        if self.api == "chat":
            request = (f"{prompt}\nReply with only the words that complete this sentence: "
                       f"\"{EXPLANATION_PREFIX} ...\"")
            response = self.client.chat_completion([{"role": "user", "content": request}],
                                                   **self.sampling)
            raw = message_text(response)
        else:
            response = self.client.completion(f"{prompt}\nExplanation: {EXPLANATION_PREFIX}",
                                              stop=["\n"], **self.sampling)
            raw = _completion_text(response)
        text = clean_explanation(raw)
        if not text:
            raise ExplanationFailure(f"model {self.client.model!r} gave no explanation; it "
                                     f"answered {raw[:_PREVIEW_CHARS]!r}")
        return Explanation(text=text, details={"backend": "llm", "model": self.client.model,
                                               "raw_completion": raw})


def placeholder_prompt(explanation: str, tokens: Sequence[str]) -> tuple[str, list[int]]:
    """The logprob simulator's prompt and the character offset of each token's placeholder.

    Every token gets one line `token<TAB>unknown`; the model's distribution at the position of
    `unknown` is its prediction of the number that belongs there.
    """
    prompt = (f"{_TASK}\n\nExplanation: {EXPLANATION_PREFIX} {explanation}.\n"
              "Activations:\n<start>\n")
    offsets = []
    for token in tokens:
        prompt += f"{display_token(token)}\t"
        offsets.append(len(prompt))
        prompt += f"{PLACEHOLDER}\n"
    return prompt + "<end>\n", offsets


def expected_activations(logprobs: Any, prompt: str, slot_offsets: Sequence[int],
                         min_numeric_fraction: float = 0.5) -> list[float]:
    """Expected number (0-10) at each placeholder, from an echoed `/completions` `logprobs` field.

    How slots are found: the echoed tokens cover the prompt from character 0, and each token's
    start is `text_offset[i]` (or, if the server omits it, the summed lengths of the tokens
    before it). A slot is the token `j` that starts exactly at the placeholder's character
    offset (its text must be a prefix of the placeholder). The model's distribution for that
    position is `top_logprobs[j]` in OpenAI's convention (entry i is the distribution token i
    was drawn from; entry 0 is null), but `top_logprobs[j - 1]` on servers that report each
    position's distribution over the *next* token (llama-cpp-python 0.3 for models without a
    BOS token, abetlen/llama-cpp-python#1983); `_distribution_shift` tells the two apart.

    Tokens whose text is a number 0-10 (surrounding spaces ignored) are kept, their
    probabilities renormalised, and the expected value taken. A slot with no number among the
    top log-probabilities gets 0, as in Bills et al.; if that happens at more than
    `1 - min_numeric_fraction` of the slots the model is not following the format and
    `SimulationFailure` is raised.
    """
    if not isinstance(logprobs, dict) or not logprobs.get("tokens") or not isinstance(
            logprobs.get("top_logprobs"), list):
        raise _NoPromptLogprobs("the server returned no prompt logprobs (field 'logprobs' is "
                                f"{preview(logprobs)}); use mode='json' for this server")
    tokens, tops = logprobs["tokens"], logprobs["top_logprobs"]
    starts = logprobs.get("text_offset")
    if not isinstance(starts, list) or len(starts) != len(tokens):
        starts = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    if not starts or starts[0] != 0 or starts[-1] < slot_offsets[-1]:
        raise _NoPromptLogprobs("logprobs do not cover the prompt; does the server honour "
                                "echo=True?")
    shift = _distribution_shift(tokens, tops)
    index_at = {start: i for i, start in enumerate(starts)}
    predictions, numeric_slots = [], 0
    for offset in slot_offsets:
        i = index_at.get(offset)
        if i is None or not tokens[i] or not prompt.startswith(tokens[i], offset):
            raise SimulationFailure(
                f"no echoed token starts at the placeholder (character {offset}); tokens near "
                f"it: {preview(tokens[max(0, (i or 0) - 2):(i or 0) + 2])}")
        value = _expected_number(tops[i - shift] if 0 <= i - shift < len(tops) else None)
        numeric_slots += value is not None
        predictions.append(0.0 if value is None else value)
    if numeric_slots < min_numeric_fraction * len(slot_offsets):
        raise SimulationFailure(f"the model put no number among its top logprobs at "
                                f"{len(slot_offsets) - numeric_slots} of {len(slot_offsets)} "
                                "placeholders")
    return predictions


def _distribution_shift(tokens: Sequence[str], tops: Sequence[Any]) -> int:
    """0 if `tops[i]` is the distribution of `tokens[i]` (OpenAI), 1 if of `tokens[i + 1]`.

    Decided by which reading makes the prompt's own tokens likelier: any language model
    predicts its prompt (English instructions, then a line pattern repeated per token) far
    better than it predicts the token before. A token outside the listed top-K counts as one
    nat below the least likely listed one.
    """
    def mean_logprob(shift: int) -> float:
        scores = []
        for i, top in enumerate(tops):
            if not isinstance(top, dict) or i + shift >= len(tokens):
                continue
            listed = [lp for lp in top.values() if lp is not None]
            if listed:
                logprob = top.get(tokens[i + shift])
                scores.append(min(listed) - 1.0 if logprob is None else logprob)
        return sum(scores) / len(scores) if scores else -math.inf

    return 1 if mean_logprob(1) > mean_logprob(0) else 0


def _expected_number(top_logprobs: Any) -> float | None:
    if not isinstance(top_logprobs, dict):
        return None
    weights: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        value = _NUMBER_TOKENS.get(token.strip())
        if value is not None and logprob is not None:
            weights[value] = weights.get(value, 0.0) + math.exp(logprob)
    total = sum(weights.values())
    if total <= 0:
        return None
    return sum(value * weight for value, weight in weights.items()) / total


def json_simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """The JSON simulator's chat request for one sequence."""
    request = (f"{_TASK}\n\nExplanation: {EXPLANATION_PREFIX} {explanation}.\n\n"
               f"Tokens ({len(tokens)}): {json.dumps(list(tokens), ensure_ascii=False)}\n\n"
               f"Predict the neuron's activation on each token. Reply with only a JSON list of "
               f"{len(tokens)} integers from 0 to 10, one per token, in order.")
    return [{"role": "user", "content": request}]


def parse_activation_list(text: str, expected_length: int) -> list[float]:
    """The first JSON array in `text` as floats clipped to 0-10; numbers given as strings count.

    Raises `SimulationFailure` when there is no array of numbers or its length is wrong: a
    prediction we cannot read must never be scored as zeros.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        numbers = _as_numbers(value)
        if numbers is None:
            continue
        if len(numbers) != expected_length:
            raise SimulationFailure(f"expected {expected_length} activations, got "
                                    f"{len(numbers)}: {preview(text)}")
        return [min(float(MAX_NORMALIZED_ACTIVATION), max(0.0, n)) for n in numbers]
    raise SimulationFailure(f"no JSON list of numbers in the answer: {preview(text)}")


def _as_numbers(value: Any) -> list[float] | None:
    if not isinstance(value, list):
        return None
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            return None
        try:
            number = float(item)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        numbers.append(number)
    return numbers


class LLMSimulator:
    """Predicts activations 0-10 from an explanation with the model behind `client`.

    `mode` picks how (see the module docstring); `resolved_mode` says which one `auto` settled
    on ("logprobs" or "json"; None before the first call). `top_logprobs` is K, the number of
    alternatives requested at each prompt position (OpenAI's legacy API allows up to 5, local
    servers more). Sequences are simulated concurrently, bounded by the client's limit.
    """

    def __init__(self, client: OpenAICompatibleClient, mode: SimulationMode = "auto",
                 top_logprobs: int = 15, temperature: float = 0.0, seed: int | None = 0,
                 min_numeric_fraction: float = 0.5):
        if mode not in ("auto", "logprobs", "json"):
            raise ValueError(f"unknown simulation mode {mode!r} (expected 'auto', 'logprobs' "
                             "or 'json')")
        self.client = client
        self.mode = mode
        self.resolved_mode: str | None = None if mode == "auto" else mode
        self.top_logprobs = top_logprobs
        self.min_numeric_fraction = min_numeric_fraction
        self.sampling: dict[str, Any] = {"temperature": temperature}
        if seed is not None:
            self.sampling["seed"] = seed

    def simulate(self, explanation: Explanation,
                 token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        if not token_sequences:
            return []
        if self.resolved_mode is None:
            try:
                first = self._simulate_with_logprobs(explanation.text, token_sequences[:1])
            except (_NoPromptLogprobs, RequestRejected):
                self.resolved_mode = "json"
            else:
                self.resolved_mode = "logprobs"
                return first + self._simulate_with_logprobs(explanation.text,
                                                            token_sequences[1:])
        if self.resolved_mode == "logprobs":
            return self._simulate_with_logprobs(explanation.text, token_sequences)
        return list(map_in_threads(lambda tokens: self._simulate_json(explanation.text, tokens),
                                   token_sequences, self.client.max_concurrency))

    def _simulate_with_logprobs(self, explanation: str,
                                token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        return list(map_in_threads(lambda tokens: self._simulate_logprobs(explanation, tokens),
                                   token_sequences, self.client.max_concurrency))

    def _simulate_logprobs(self, explanation: str, tokens: Sequence[str]) -> list[float]:
        if not tokens:
            return []
        prompt, slots = placeholder_prompt(explanation, tokens)
        # max_tokens=1, not 0: llama.cpp's server reads 0 as "no limit".
        response = self.client.completion(prompt, echo=True, logprobs=self.top_logprobs,
                                          max_tokens=1, **self.sampling)
        return expected_activations(response["choices"][0].get("logprobs"), prompt, slots,
                                    self.min_numeric_fraction)

    def _simulate_json(self, explanation: str, tokens: Sequence[str]) -> list[float]:
        if not tokens:
            return []
        response = self.client.chat_completion(json_simulation_messages(explanation, tokens),
                                               max_tokens=4 * len(tokens) + 16, **self.sampling)
        return parse_activation_list(message_text(response), len(tokens))


def message_text(response: dict[str, Any]) -> str:
    """A chat completion's message text (the simulator's and the judge's answers)."""
    message = response["choices"][0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise SimulationFailure(f"chat response has no message content: {preview(response)}")
    return content


def _completion_text(response: dict[str, Any]) -> str:
    text = response["choices"][0].get("text")
    if not isinstance(text, str):
        raise SimulationFailure(f"completion response has no text: {preview(response)}")
    return text


def preview(value: Any) -> str:
    """The start of an unreadable answer, quoted, for a failure message."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text[:_PREVIEW_CHARS])
