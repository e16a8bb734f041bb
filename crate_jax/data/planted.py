"""The planted corpus: a small English-like language whose latent features are known per token.

Why: on natural text nobody knows what a neuron *should* encode, and tiny models trained on a
CPU stay far from converged. Here every token carries ground-truth labels (word classes, the
document's hidden topic, bracket depth, negation scope, a copied span, pending subject-verb
agreement), the entropy floor is known exactly, and `tiny` models pass the count-based
references in minutes (what they have not learned yet shows, by feature, as loss above the
floor; on a 2-core CPU budget that is mostly the copy pattern).

The language. A document has a hidden topic (animals, food, tools or nature, uniform) that
biases its nouns and adjectives (80% from the topic's words). It is 2 or more sentences
(after the second, each `.` ends the document with probability 0.3):

    SUBJ [near NP]{0,2} [( NP [( NP )]* )] VERB OBJ [( ... )] [today | now] .
    SUBJ [near NP]{0,2} [( ... )] does|do not VERB any|the NP [( ... )] [at all | yet] .
    again : <the previous sentence, verbatim>

(at most one top-level bracket per sentence, after the subject or the object).

Verbs agree in number with the subject noun, which may sit several tokens back behind
prepositional phrases and brackets; `not` opens a negation scope (until `.`) in which the
object's determiner is mostly `any` and negative-polarity tails appear; brackets nest two deep;
`again :` starts an exact copy of the previous sentence (an induction pattern).

One function, `next_token_probabilities(state)`, gives the next word's probability under each
topic from an observable parser state; sampling and the entropy floor both use it, so they
cannot disagree. The floor of a token is the exact Bayesian predictive: the state is a
deterministic function of the document so far and the topic posterior is updated by Bayes'
rule, so `-log p(x_t | x_<t)` is exact (no sampling, no approximation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

GENERATOR_VERSION = "planted-2"  # planted-2: token identities, copy trigger, next copied
END_OF_DOCUMENT = "<|endoftext|>"  # the pipeline's end-of-text token, appended after each document

TOPICS = ("animals", "food", "tools", "nature")
TOPIC_NOUNS = {  # (singular, plural)
    "animals": [("cat", "cats"), ("dog", "dogs"), ("horse", "horses"), ("bird", "birds"),
                ("fox", "foxes"), ("cow", "cows"), ("wolf", "wolves"), ("mouse", "mice")],
    "food": [("apple", "apples"), ("cake", "cakes"), ("pie", "pies"), ("egg", "eggs"),
             ("pear", "pears"), ("plum", "plums"), ("bean", "beans"), ("lemon", "lemons")],
    "tools": [("hammer", "hammers"), ("saw", "saws"), ("drill", "drills"), ("knife", "knives"),
              ("rope", "ropes"), ("nail", "nails"), ("wrench", "wrenches"),
              ("shovel", "shovels")],
    "nature": [("cloud", "clouds"), ("storm", "storms"), ("river", "rivers"), ("hill", "hills"),
               ("tree", "trees"), ("lake", "lakes"), ("field", "fields"), ("stone", "stones")],
}
TOPIC_ADJECTIVES = {
    "animals": ["furry", "wild", "tame", "hungry", "loud", "sleepy"],
    "food": ["sweet", "fresh", "ripe", "sour", "salty", "warm"],
    "tools": ["sharp", "heavy", "rusty", "metal", "long", "useful"],
    "nature": ["green", "wide", "calm", "cold", "dark", "quiet"],
}
VERBS = [("see", "sees"), ("like", "likes"), ("find", "finds"), ("move", "moves"),
         ("hold", "holds"), ("want", "wants"), ("watch", "watches"), ("carry", "carries")]
DETERMINERS = ("the", "a", "some", "any")
AUXILIARIES = {False: "does", True: "do"}  # keyed by "subject is plural"
FUNCTION_WORDS = ("near", "(", ")", "not", "again", ":", ".", "at", "all", "yet", "today", "now")

# Decision probabilities of the grammar.
TOPIC_BIAS = 0.8          # a noun or adjective comes from the document's topic with this weight
ADJECTIVE = 0.4           # an adjective after a determiner
PREPOSITION = 0.3         # `near NP` after the subject (at most MAX_PREPOSITIONS)
MAX_PREPOSITIONS = 2
BRACKET = 0.2             # `( NP )` after a subject or object noun, once per sentence
NESTED_BRACKET = 0.25     # a second `( NP )` inside the first
NEGATION = 0.3            # `does/do not VERB` instead of an agreeing verb
ANY_IN_SCOPE = 0.7        # the object's determiner under negation
NEGATED_TAILS = {"at": 0.2, "yet": 0.15}
PLAIN_TAILS = {"today": 0.15, "now": 0.15}
COPY = 0.25               # `again :` + a copy of the previous sentence, from the 2nd sentence on
MIN_SENTENCES = 2
END = 0.3                 # the document ends after a sentence, once it has MIN_SENTENCES


def _vocabulary() -> tuple[str, ...]:
    nouns = [form for topic in TOPICS for pair in TOPIC_NOUNS[topic] for form in pair]
    adjectives = [word for topic in TOPICS for word in TOPIC_ADJECTIVES[topic]]
    verbs = [form for pair in VERBS for form in pair] + list(AUXILIARIES.values())
    return (*DETERMINERS, *nouns, *adjectives, *verbs, *FUNCTION_WORDS, END_OF_DOCUMENT)


VOCABULARY = _vocabulary()
WORD_INDEX = {word: index for index, word in enumerate(VOCABULARY)}
NOUN_FORMS = {form: (topic, plural) for topic in TOPICS
              for pair in TOPIC_NOUNS[topic] for plural, form in enumerate(pair)}
ADJECTIVE_TOPIC = {word: topic for topic in TOPICS for word in TOPIC_ADJECTIVES[topic]}
BASE_VERBS = frozenset(base for base, _ in VERBS)  # after `does/do not`
VERB_FORMS = frozenset(form for pair in VERBS for form in pair)

# The ground-truth features, one boolean per token. Word classes, noun classes and token
# identities can be read off the token; the rest are latent: they need the document's context.
# Every token carries a feature of its own besides the topic (its class, or for a function word
# or the end of text its identity `token:<word>`), so a neuron that detects a single token type
# has a feature to be recognised by. `copy:copied` marks a copied token at its own position;
# `copy:next_copied` the position before one (what an induction neuron predicts: `:` and every
# copied token but the last).
IDENTITY_WORDS = (*FUNCTION_WORDS, END_OF_DOCUMENT)
FEATURES = (
    "word:determiner", "word:noun", "word:plural_noun", "word:adjective", "word:verb",
    "word:bracket", "word:copy_trigger",
    *(f"token:{word}" for word in IDENTITY_WORDS),
    *(f"noun_class:{topic}" for topic in TOPICS),
    *(f"topic:{topic}" for topic in TOPICS),
    "brackets:inside", "brackets:nested", "negation:scope", "copy:copied", "copy:next_copied",
    "agreement:awaiting_plural_verb", "agreement:awaiting_singular_verb",
)
FEATURE_INDEX = {name: index for index, name in enumerate(FEATURES)}


def _word_distribution(weights: dict[str, float]) -> np.ndarray:
    """`[topics, vocabulary]` probabilities of a topic-independent choice."""
    row = np.zeros(len(VOCABULARY))
    for word, weight in weights.items():
        row[WORD_INDEX[word]] += weight
    return np.tile(row, (len(TOPICS), 1))


def _topical(words_of_topic: dict[str, list[str]]) -> np.ndarray:
    """`[topics, vocabulary]`: TOPIC_BIAS on the topic's words, the rest spread over all."""
    everything = [word for topic in TOPICS for word in words_of_topic[topic]]
    table = np.zeros((len(TOPICS), len(VOCABULARY)))
    for row, topic in enumerate(TOPICS):
        for word in words_of_topic[topic]:
            table[row, WORD_INDEX[word]] += TOPIC_BIAS / len(words_of_topic[topic])
        for word in everything:
            table[row, WORD_INDEX[word]] += (1 - TOPIC_BIAS) / len(everything)
    return table


_ADJECTIVES = _topical(TOPIC_ADJECTIVES)
_NOUNS = {plural: _topical({topic: [pair[plural] for pair in TOPIC_NOUNS[topic]]
                            for topic in TOPICS}) for plural in (0, 1)}
_VERBS = {plural: _word_distribution({pair[1 - plural]: 1 / len(VERBS) for pair in VERBS})
          for plural in (False, True)}
_BASE_VERBS = _word_distribution({base: 1 / len(VERBS) for base in BASE_VERBS})


@dataclasses.dataclass
class ParserState:
    """Everything the grammar's next choice depends on, read off the document so far.

    `phase` names the slot the next word fills; the rest is what that slot needs (the current
    noun phrase's role and number, the subject's number, bracket depth, negation, the previous
    sentence for a copy).
    """

    phase: str = "sentence"
    sentences: int = 0
    role: str = "subject"            # the noun phrase being read: subject | near | bracket | object
    determiner: str = ""
    subject_plural: bool | None = None
    prepositions: int = 0
    bracket_used: bool = False
    depth: int = 0
    bracket_return: str = ""         # the role a closed top-level bracket returns to
    negated: bool = False
    verb_seen: bool = False
    sentence: list[str] = dataclasses.field(default_factory=list)
    previous: list[str] = dataclasses.field(default_factory=list)
    previous_labels: list[np.ndarray] = dataclasses.field(default_factory=list)
    labels: list[np.ndarray] = dataclasses.field(default_factory=list)
    copy_position: int = -1          # >= 0 while copying the previous sentence


def _after_noun(state: ParserState) -> np.ndarray:
    """The next word after a noun phrase ends, by the role that phrase had."""
    if state.role == "bracket":
        if state.depth < 2:
            return _mix((NESTED_BRACKET, _word_distribution({"(": 1})),
                        (1 - NESTED_BRACKET, _word_distribution({")": 1})))
        return _word_distribution({")": 1})
    if state.role in ("subject", "near"):
        return _after_subject(state)
    return _after_object(state)


def _after_subject(state: ParserState) -> np.ndarray:
    choices = []
    rest = 1.0
    if state.prepositions < MAX_PREPOSITIONS:
        choices.append((PREPOSITION, _word_distribution({"near": 1})))
        rest -= PREPOSITION
    if not state.bracket_used:
        choices.append((BRACKET, _word_distribution({"(": 1})))
        rest -= BRACKET
    plural = bool(state.subject_plural)
    choices.append((rest * NEGATION, _word_distribution({AUXILIARIES[plural]: 1})))
    choices.append((rest * (1 - NEGATION), _VERBS[plural]))
    return _mix(*choices)


def _after_object(state: ParserState) -> np.ndarray:
    choices = []
    rest = 1.0
    if not state.bracket_used:
        choices.append((BRACKET, _word_distribution({"(": 1})))
        rest -= BRACKET
    tails = NEGATED_TAILS if state.negated else PLAIN_TAILS
    choices.append((rest, _word_distribution({**tails, ".": 1 - sum(tails.values())})))
    return _mix(*choices)


def _determiner_choices(role: str, negated: bool) -> dict[str, float]:
    if role == "object" and negated:
        return {"any": ANY_IN_SCOPE, "the": 1 - ANY_IN_SCOPE}
    return {"the": 0.5, "a": 0.25, "some": 0.25}


def _noun(determiner: str) -> np.ndarray:
    if determiner == "a":
        return _NOUNS[0]
    if determiner == "some":
        return _NOUNS[1]
    return _mix((0.5, _NOUNS[0]), (0.5, _NOUNS[1]))


def _sentence_start(state: ParserState) -> np.ndarray:
    subject = _word_distribution(_determiner_choices("subject", False))
    if state.sentences == 0:
        return subject
    return _mix((COPY, _word_distribution({"again": 1})), (1 - COPY, subject))


def _mix(*weighted: tuple[float, np.ndarray]) -> np.ndarray:
    return sum(weight * table for weight, table in weighted)


_TABLES: dict[tuple, np.ndarray] = {}


def next_token_probabilities(state: ParserState) -> np.ndarray:
    """`[topics, vocabulary]`: the next word's probability under each topic, given `state`.

    Read-only, and cached by the state fields the grammar reads (a few thousand distinct
    tables), so that generation does not rebuild the same table for every word.
    """
    key = (state.phase, min(state.sentences, MIN_SENTENCES), state.role, state.determiner,
           state.subject_plural, state.prepositions, state.bracket_used, state.depth,
           state.negated, state.previous[state.copy_position] if state.phase == "copy" else "")
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = _build_table(state)
        table.flags.writeable = False
    return table


def _build_table(state: ParserState) -> np.ndarray:
    phase = state.phase
    if phase == "sentence":
        return _sentence_start(state)
    if phase == "after_sentence":
        if state.sentences < MIN_SENTENCES:
            return _sentence_start(state)
        return _mix((END, _word_distribution({END_OF_DOCUMENT: 1})),
                    (1 - END, _sentence_start(state)))
    if phase == "copy_colon":
        return _word_distribution({":": 1})
    if phase == "copy":
        return _word_distribution({state.previous[state.copy_position]: 1})
    if phase == "determiner":
        return _word_distribution(_determiner_choices(state.role, state.negated))
    if phase == "adjective_or_noun":
        return _mix((ADJECTIVE, _ADJECTIVES), (1 - ADJECTIVE, _noun(state.determiner)))
    if phase == "noun":
        return _noun(state.determiner)
    if phase == "after_noun":
        return _after_noun(state)
    if phase == "not":
        return _word_distribution({"not": 1})
    if phase == "base_verb":
        return _BASE_VERBS
    if phase == "all":
        return _word_distribution({"all": 1})
    if phase == "period":
        return _word_distribution({".": 1})
    raise AssertionError(f"unknown parser phase {phase!r}")


def _label(state: ParserState, word: str, depth_at: int) -> np.ndarray:
    """The features of `word`, read from the state just after it (`depth_at`: its bracket level,
    a closing bracket counting as inside the level it closes)."""
    labels = np.zeros(len(FEATURES), bool)

    def mark(name: str) -> None:
        labels[FEATURE_INDEX[name]] = True

    if word in DETERMINERS:
        mark("word:determiner")
    if word in NOUN_FORMS:
        topic, plural = NOUN_FORMS[word]
        mark("word:noun")
        mark(f"noun_class:{topic}")
        if plural:
            mark("word:plural_noun")
    if word in ADJECTIVE_TOPIC:
        mark("word:adjective")
    if word in VERB_FORMS or word in AUXILIARIES.values():
        mark("word:verb")
    if word in ("(", ")"):
        mark("word:bracket")
    if word in ("again", ":"):
        mark("word:copy_trigger")
    if word in IDENTITY_WORDS:
        mark(f"token:{word}")
    if depth_at >= 1:
        mark("brackets:inside")
    if depth_at >= 2:
        mark("brackets:nested")
    if state.negated and word not in ("not", "."):
        mark("negation:scope")
    if state.subject_plural is not None and not state.verb_seen:
        mark("agreement:awaiting_plural_verb" if state.subject_plural
             else "agreement:awaiting_singular_verb")
    return labels


def advance(state: ParserState, word: str) -> np.ndarray:
    """Moves `state` past `word` (which the grammar must allow); returns the word's labels.

    Topic labels are not set here: the topic is hidden from the parser (see `score_words`).
    """
    if state.phase == "copy":
        labels = state.previous_labels[state.copy_position].copy()
        labels[FEATURE_INDEX["copy:copied"]] = True
        state.copy_position += 1
        state.sentence.append(word)
        state.labels.append(labels)
        if state.copy_position == len(state.previous):
            state.copy_position = -1
            _end_sentence(state, keep_previous=True)
        return labels
    depth_before = state.depth
    complete = _transition(state, word)
    labels = _label(state, word, depth_before if word == ")" else state.depth)
    state.sentence.append(word)
    state.labels.append(labels)
    if complete:
        _end_sentence(state, keep_previous=False)
    return labels


def _transition(state: ParserState, word: str) -> bool:
    """Updates the phase for `word`; returns whether `word` completed a sentence."""
    phase = state.phase
    if phase in ("sentence", "after_sentence"):
        if word == END_OF_DOCUMENT:
            state.phase = "ended"
        elif word == "again":
            state.phase = "copy_colon"
        elif word in DETERMINERS:
            _begin_noun_phrase(state, "subject", word)
        else:
            _refuse(word, phase)
    elif phase == "copy_colon" and word == ":":
        state.phase = "copy"
        state.copy_position = 0
    elif phase == "determiner" and word in DETERMINERS:
        _begin_noun_phrase(state, state.role, word)
    elif phase == "adjective_or_noun" and word in ADJECTIVE_TOPIC:
        state.phase = "noun"
    elif phase in ("adjective_or_noun", "noun") and word in NOUN_FORMS:
        if state.role == "subject":
            state.subject_plural = bool(NOUN_FORMS[word][1])
        state.phase = "after_noun"
    elif phase == "after_noun":
        return _after_noun_word(state, word)
    elif phase == "not" and word == "not":
        state.negated = True
        state.phase = "base_verb"
    elif phase == "base_verb" and word in BASE_VERBS:
        _begin_object(state)
    elif phase == "all" and word == "all":
        state.phase = "period"
    elif phase == "period" and word == ".":
        return True
    else:
        _refuse(word, phase)
    return False


def _refuse(word: str, phase: str) -> None:
    raise ValueError(f"the planted grammar does not allow {word!r} in phase {phase!r}")


def _begin_noun_phrase(state: ParserState, role: str, determiner: str) -> None:
    state.role = role
    state.determiner = determiner
    state.phase = "adjective_or_noun"


def _begin_object(state: ParserState) -> None:
    state.verb_seen = True
    state.role = "object"
    state.phase = "determiner"


def _after_noun_word(state: ParserState, word: str) -> bool:
    """A word after a complete noun phrase: bracket, preposition, verb, tail or period."""
    if word == "(":
        state.depth += 1
        state.bracket_used = True
        if state.depth == 1:
            state.bracket_return = "subject" if state.role in ("subject", "near") else "object"
        state.role = "bracket"
        state.phase = "determiner"
    elif word == ")" and state.depth > 0:
        state.depth -= 1
        if state.depth == 0:
            state.role = state.bracket_return
    elif word == "near":
        state.prepositions += 1
        state.role = "near"
        state.phase = "determiner"
    elif word in AUXILIARIES.values():
        state.verb_seen = True
        state.phase = "not"
    elif word in VERB_FORMS:
        _begin_object(state)
    elif word == "at":
        state.phase = "all"
    elif word in ("yet", "today", "now"):
        state.phase = "period"
    elif word == ".":
        return True
    else:
        _refuse(word, "after_noun")
    return False


def _end_sentence(state: ParserState, keep_previous: bool) -> None:
    if not keep_previous:
        state.previous, state.previous_labels = state.sentence, state.labels
    state.sentence, state.labels = [], []
    state.sentences += 1
    state.phase = "after_sentence"
    state.role, state.determiner, state.subject_plural = "subject", "", None
    state.prepositions, state.bracket_used, state.depth = 0, False, 0
    state.negated, state.verb_seen = False, False


@dataclasses.dataclass(frozen=True)
class PlantedDocument:
    """One generated document and its ground truth, end-of-document token included.

    `words`: n words then END_OF_DOCUMENT; `labels`: `[n + 1, len(FEATURES)]` bool;
    `floor_nll`: `[n + 1]`, the exact `-log p(word | document so far)` in nats.
    """

    topic: str
    words: tuple[str, ...]
    labels: np.ndarray
    floor_nll: np.ndarray

    @property
    def text(self) -> str:
        """The document as the text pipeline sees it (words joined by spaces, no end token)."""
        return " ".join(self.words[:-1])


class TopicPosterior:
    """The exact predictive of a reader who knows the grammar but not the document's topic."""

    def __init__(self):
        self.log_weights = np.full(len(TOPICS), -math.log(len(TOPICS)))

    def negative_log_likelihood(self, probabilities: np.ndarray, word: str) -> float:
        """`-log p(word | so far)`, then conditions the posterior on `word`."""
        column = probabilities[:, WORD_INDEX[word]]
        with np.errstate(divide="ignore"):
            joint = self.log_weights + np.log(column)
        total = np.logaddexp.reduce(joint)
        if not np.isfinite(total):
            raise ValueError(f"{word!r} has probability 0 here under every topic")
        self.log_weights = joint - total
        return float(-total)


def score_words(words: list[str], topic: str | None = None) -> PlantedDocument:
    """Ground truth of a given word sequence (END_OF_DOCUMENT last): its labels and floor.

    Raises ValueError if the grammar cannot produce it. `topic` labels the topic features
    (the floor never uses it).
    """
    remaining = iter(words)

    def next_word(_: np.ndarray) -> str:
        word = next(remaining, None)
        if word is None:
            raise ValueError("a planted document ends with END_OF_DOCUMENT")
        return word

    document = _read_document(next_word, topic)
    if len(document.words) != len(words):
        raise ValueError("a planted document ends at its first END_OF_DOCUMENT")
    return document


def generate_document(seed: int, index: int) -> PlantedDocument:
    """Document `index` of the corpus with `seed`: a pure function of both (random access)."""
    rng = np.random.default_rng([seed, index])
    topic_row = int(rng.integers(len(TOPICS)))

    def sample(table: np.ndarray) -> str:
        cumulative = np.cumsum(table[topic_row])
        return VOCABULARY[int(np.searchsorted(cumulative, rng.random() * cumulative[-1],
                                              side="right"))]

    return _read_document(sample, TOPICS[topic_row])


def _read_document(next_word: Callable[[np.ndarray], str], topic: str | None) -> PlantedDocument:
    """Reads one document word by word, `next_word(table)` choosing each word from the next-word
    table, and records each word's labels and floor in the same pass."""
    state, posterior = ParserState(), TopicPosterior()
    words, labels, nll = [], [], []
    while state.phase != "ended":
        table = next_token_probabilities(state)
        word = next_word(table)
        nll.append(posterior.negative_log_likelihood(table, word))
        labels.append(advance(state, word))
        words.append(word)
    label_array = np.stack(labels)
    label_array[:-1, FEATURE_INDEX["copy:next_copied"]] = \
        label_array[1:, FEATURE_INDEX["copy:copied"]]
    if topic is not None:
        label_array[:, FEATURE_INDEX[f"topic:{topic}"]] = True
    return PlantedDocument(topic=topic or "", words=tuple(words), labels=label_array,
                           floor_nll=np.asarray(nll))


def generate_documents(seed: int, count: int) -> Iterator[tuple[int, PlantedDocument]]:
    for index in range(count):
        yield index, generate_document(seed, index)
