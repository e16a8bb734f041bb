"""The `llm` judge: delphi's detection and fuzzing prompts, answered by an OpenAI-compatible model.

Follows EleutherAI delphi's classifier scorers (`delphi/scorers/classifier/`, Paulo et al. 2024),
in our own words:

* The judge reads an explanation and `BATCH_SIZE` numbered contexts (`Example 1: ...`), each the
  concatenation of its tokens on one line, and answers with a list of 0s and 1s, one per context.
* Detection asks whether the neuron fires on each context's last token, shown between `<<` and
  `>>` (`judging` explains why the target is one token, not delphi's whole context); fuzzing
  shows each context with some tokens between `<<` and `>>` (consecutive marked tokens share one
  pair, as in delphi) and asks whether every marked token is one the explanation says the
  neuron fires on.
* A system message states the task, then two worked examples (user turn, assistant answer)
  show the format, then the batch itself. Temperature 0.
* Contexts are shuffled (seeded) before they are cut into batches, as delphi shuffles its
  samples, so that a batch mixes kinds of contexts even when the caller lists them grouped (all
  activating ones first; a fuzzed context's right and wrong highlights side by side). Values come
  back in the caller's order.

Where it departs from delphi, and why:
* The request says how many examples there are and that the answer must have that many numbers,
  and examples are numbered from 1: small models lose count otherwise.
* An answer that cannot be read as exactly one 0/1 per context of a batch raises
  `SimulationFailure` for the whole call (delphi logs it and drops that batch's samples): a
  judgement we cannot read must fail the neuron's score, never count as "no".
* Tokens are shown with `llm_backend.display_token` (newlines and tabs escaped), so each context
  stays on its own line.
* Only the plain 0/1 answer is used (threshold 1.0); delphi's optional probability of "1" from
  answer-token logprobs is not implemented (`graded = False`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from crate_jax.interp.explanations.explanation import Explanation, SimulationFailure
from crate_jax.interp.explanations.llm_backend import display_token, message_text, preview
from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient
from crate_jax.interp.explanations.thread_pool import map_in_threads

# delphi's default (`num_examples_per_scorer_prompt = 5` in delphi/config.py): more contexts per
# prompt are cheaper, but leak information between them and are harder to answer in format.
BATCH_SIZE = 5
HIGHLIGHT_OPEN, HIGHLIGHT_CLOSE = "<<", ">>"

_ROLE = ("You are a careful linguistics researcher studying one neuron of a language model. "
         "You are given an explanation of what the neuron responds to, such as \"male "
         "pronouns\" or \"words about the weather\", and a few numbered text examples.")
_ANSWER_FORMAT = ("Answer each example in order. Reply with only a list of 0s and 1s, one per "
                  "example, and nothing else.")
_DETECTION_TASK = (f"{_ROLE}\n\nThe last token of each example is marked between "
                   f"{HIGHLIGHT_OPEN} and {HIGHLIGHT_CLOSE}. For each example, answer 1 if the "
                   "neuron responds to that marked token, read in the context before it (it is "
                   "what the explanation describes), and 0 if it does not. Any number of them, "
                   f"from none to all, may be 1.\n\n{_ANSWER_FORMAT}")
_FUZZING_TASK = (f"{_ROLE}\n\nIn each example some tokens are marked between "
                 f"{HIGHLIGHT_OPEN} and {HIGHLIGHT_CLOSE}. Some examples are marked where the "
                 "neuron responds, others at random: all, none or some of them may be marked "
                 "correctly. For each example, answer 1 if every marked token is one the "
                 "explanation says the neuron responds to, and 0 if any marked token is "
                 f"not.\n\n{_ANSWER_FORMAT}")

# Worked examples, written for this module: (explanation, [(tokens, highlighted)], answer).
# Their lengths differ from each other and from BATCH_SIZE, so that the answer's length is
# seen to follow the number of examples.
_WEATHER = "words about the weather, such as \"rain\" or \"snow\""
_YEARS = "years written as four digits"
_DETECTION_SHOTS = [
    (_WEATHER, [["We", " stayed", " in", " because", " of", " the", " rain"],
                ["She", " paid", " the", " bill", " and", " left"],
                ["Snow", " is", " expected", " tomorrow", " in", " the", " north", " and",
                 " more", " snow"]],
     "[1, 0, 1]"),
    (_YEARS, [["Sales", " in", " 2019"],
              ["He", " scored", " 24"],
              ["The", " bridge", " opened", " in", " 1932"],
              ["Back", " in", " 1932", " we", " called"]],
     "[1, 0, 1, 0]"),
]
_FUZZING_SHOTS = [
    (_WEATHER, [(["We", " stayed", " in", " because", " of", " the", " rain", "."],
                 [False, False, False, False, False, False, True, False]),
                (["She", " paid", " the", " bill", " and", " left", "."],
                 [False, True, False, False, False, False, False]),
                (["It", " was", " sunny", ",", " so", " we", " walked", "."],
                 [False, False, True, False, False, False, True, False])],
     "[1, 0, 0]"),
    (_YEARS, [(["Sales", " in", " 2019", " were", " above", " 2018", "."],
               [False, False, True, False, False, True, False]),
              (["He", " scored", " 24", " points", "."],
               [False, False, True, False, False]),
              (["The", " bridge", " opened", " in", " 1932", "."],
               [False, False, False, False, True, False]),
              (["Call", " me", " after", " lunch", "."],
               [True, False, False, False, False])],
     "[1, 0, 1, 0]"),
]


def context_text(tokens: Sequence[str], highlighted: Sequence[bool] | None = None) -> str:
    """The tokens joined into one line, each run of highlighted tokens between `<<` and `>>`."""
    if highlighted is None:
        return "".join(display_token(token) for token in tokens)
    if len(highlighted) != len(tokens):
        raise ValueError(f"{len(highlighted)} highlight flags for {len(tokens)} tokens; give one "
                         "flag per token")
    pieces, open_run = [], False
    for token, marked in zip(tokens, highlighted, strict=True):
        if marked != open_run:
            pieces.append(HIGHLIGHT_OPEN if marked else HIGHLIGHT_CLOSE)
            open_run = marked
        pieces.append(display_token(token))
    if open_run:
        pieces.append(HIGHLIGHT_CLOSE)
    return "".join(pieces)


def _request(explanation: str, lines: Sequence[str]) -> str:
    examples = "\n".join(f"Example {number}: {line}" for number, line in enumerate(lines, 1))
    numbers = "number" if len(lines) == 1 else "numbers"
    return (f"Explanation: {explanation}\n\n{examples}\n\nReply with a list of {len(lines)} "
            f"{numbers} (0 or 1).")


def _messages(task: str, shots: Sequence[tuple[str, list[str], str]], explanation: str,
              lines: Sequence[str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": task}]
    for shot_explanation, shot_lines, answer in shots:
        messages.append({"role": "user", "content": _request(shot_explanation, shot_lines)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _request(explanation, lines)})
    return messages


def detection_prompt(explanation: str,
                     contexts: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """The chat messages asking, for each of `contexts` (one batch), whether the neuron fires
    on its last token (marked)."""
    shots = [(text, [context_text(c, _last_marked(c)) for c in shot], answer)
             for text, shot, answer in _DETECTION_SHOTS]
    return _messages(_DETECTION_TASK, shots, explanation,
                     [context_text(c, _last_marked(c)) for c in contexts])


def _last_marked(tokens: Sequence[str]) -> list[bool]:
    return [False] * (len(tokens) - 1) + [True] if tokens else []


def fuzzing_prompt(explanation: str, contexts: Sequence[Sequence[str]],
                   highlighted: Sequence[Sequence[bool]]) -> list[dict[str, str]]:
    """The chat messages asking, for each of `contexts` (one batch) with its `highlighted`
    tokens marked, whether the marked tokens are the ones the explanation describes."""
    if len(highlighted) != len(contexts):
        raise ValueError(f"{len(highlighted)} highlight lists for {len(contexts)} contexts; give "
                         "one per context")
    shots = [(text, [context_text(c, marks) for c, marks in shot], answer)
             for text, shot, answer in _FUZZING_SHOTS]
    return _messages(_FUZZING_TASK, shots, explanation,
                     [context_text(c, marks) for c, marks in zip(contexts, highlighted,
                                                                  strict=True)])


_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_ZERO_ONE = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BARE_LIST = re.compile(r"[01](?:\s*[,\s]\s*[01])*")


def parse_judgements(text: str, count: int) -> list[float]:
    """The answer's 0/1 judgements as floats, `count` of them.

    The answer is the first bracketed list whose items are all numbers or booleans (quoted or
    not; JSON's and Python's spellings), so chatter around it and bracketed words before it are
    ignored: `Sure: [1, 0, 1]`, `["1", "0"]`, `[True, False]`. An answer without brackets is
    accepted only if it is nothing but 0s and 1s (`1, 0, 1`). Raises `SimulationFailure` when
    there is no such list, its length is not `count`, or it holds a number other than 0 or 1:
    a judgement we cannot read must never be counted as "no".
    """
    for match in _BRACKETED.finditer(text):
        items = [item.strip().strip("\"'").strip().lower() for item in match.group(1).split(",")]
        if items == [""] or not all(item in _ZERO_ONE or _NUMBER.fullmatch(item)
                                    for item in items):
            continue
        bad = [item for item in items if item not in _ZERO_ONE]
        if bad:
            raise SimulationFailure(f"judgements must be 0 or 1, got {bad[0]} in "
                                    f"{match.group(0)!r}: {preview(text)}")
        return _counted([_ZERO_ONE[item] for item in items], count, text)
    bare = text.strip().rstrip(".")
    if _BARE_LIST.fullmatch(bare):
        return _counted([float(digit) for digit in re.findall(r"[01]", bare)], count, text)
    raise SimulationFailure(f"no list of 0s and 1s in the answer: {preview(text)}")


def _counted(values: list[float], count: int, text: str) -> list[float]:
    if len(values) != count:
        raise SimulationFailure(f"expected {count} judgements (one per example), got "
                                f"{len(values)}: {preview(text)}")
    return values


class LLMJudge:
    """`explanation.Judge` backed by the chat model behind `client`: 0.0 or 1.0 per context.

    Contexts go out `batch_size` to a request (concurrently, bounded by the client's limit),
    after a shuffle seeded by `seed` (None keeps the caller's order); `seed` is also sent to the
    server with `temperature`. `BackendError` from the client propagates; an unreadable answer
    to any batch raises `SimulationFailure` for the whole call.
    """

    threshold = 1.0
    graded = False

    def __init__(self, client: OpenAICompatibleClient, batch_size: int = BATCH_SIZE,
                 temperature: float = 0.0, seed: int | None = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.client = client
        self.batch_size = batch_size
        self.seed = seed
        self.sampling: dict[str, Any] = {"temperature": temperature}
        if seed is not None:
            self.sampling["seed"] = seed

    def detect(self, explanation: Explanation,
               contexts: Sequence[Sequence[str]]) -> list[float]:
        return self._judge(lambda batch: detection_prompt(
            explanation.text, [contexts[i] for i in batch]), len(contexts))

    def fuzz(self, explanation: Explanation, contexts: Sequence[Sequence[str]],
             highlighted: Sequence[Sequence[bool]]) -> list[float]:
        if len(highlighted) != len(contexts):
            raise ValueError(f"{len(highlighted)} highlight lists for {len(contexts)} "
                             "contexts; give one per context")
        return self._judge(lambda batch: fuzzing_prompt(
            explanation.text, [contexts[i] for i in batch], [highlighted[i] for i in batch]),
            len(contexts))

    def _judge(self, prompt_for: Callable[[list[int]], list[dict[str, str]]],
               count: int) -> list[float]:
        """Asks `prompt_for(batch)` for each batch of context indices; values in index order."""
        order = list(range(count))
        if self.seed is not None:
            random.Random(self.seed).shuffle(order)
        batches = [order[i:i + self.batch_size] for i in range(0, count, self.batch_size)]
        answers = map_in_threads(lambda batch: self._ask(prompt_for(batch), len(batch)),
                                 batches, self.client.max_concurrency)
        values = [0.0] * count
        for batch, judged in zip(batches, answers, strict=True):
            for index, value in zip(batch, judged, strict=True):
                values[index] = value
        return values

    def _ask(self, messages: list[dict[str, str]], count: int) -> list[float]:
        # Room for "[1, 0, ...]" (about three tokens an item) and a few words around it.
        response = self.client.chat_completion(messages, max_tokens=4 * count + 24,
                                               **self.sampling)
        return parse_judgements(message_text(response), count)
