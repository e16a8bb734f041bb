"""The planted corpus: its labels, its entropy floor, its token arrays and the reference losses."""

import math

import numpy as np
import pytest

from crate_jax.data import planted
from crate_jax.data.references import reference_losses, unigram_bigram_nll
from crate_jax.data.token_arrays import prepare_token_arrays, read_planted_truth

END = planted.END_OF_DOCUMENT


def _labels_of(document, word_index):
    row = document.labels[word_index]
    return {name for name, on in zip(planted.FEATURES, row, strict=True) if on}


def test_labels_of_a_hand_written_document():
    first = ("the cats near a dog ( some furry foxes ( the egg ) ) do not see any cow at all .")
    second = "a sharp knife holds the apples ."
    words = [*first.split(), "again", ":", *first.split(), *second.split(), END]
    document = planted.score_words(words, topic="animals")
    at = {i: _labels_of(document, i) for i in range(len(words))}
    assert at[1] == {"word:noun", "word:plural_noun", "noun_class:animals", "topic:animals",
                     "agreement:awaiting_plural_verb"}
    assert at[4] == {"word:noun", "noun_class:animals", "topic:animals",
                     "agreement:awaiting_plural_verb"}  # the distractor noun is singular
    assert at[5] == {"word:bracket", "token:(", "brackets:inside", "topic:animals",
                     "agreement:awaiting_plural_verb"}
    assert all("brackets:nested" in at[i] for i in (9, 10, 11, 12))
    assert "brackets:inside" in at[13] and "brackets:nested" not in at[13]
    assert at[14] == {"word:verb", "topic:animals"}  # "do": the agreement is resolved
    assert at[15] == {"token:not", "topic:animals"}  # "not" opens the scope
    assert all("negation:scope" in at[i] for i in range(16, 21))  # see any cow at all
    assert at[21] == {"token:.", "topic:animals"}  # "." ends the scope
    assert at[22] == {"word:copy_trigger", "token:again", "topic:animals"}
    assert at[23] == {"word:copy_trigger", "token::", "copy:next_copied", "topic:animals"}
    copy_start = 24
    copied = len(first.split())
    for offset in range(copied):
        # An induction neuron at a copied token knows the next one is copied, but the last.
        next_copied = {"copy:next_copied"} if offset < copied - 1 else set()
        assert at[copy_start + offset] == at[offset] | {"copy:copied"} | next_copied
    assert document.floor_nll[copy_start:copy_start + len(first.split())].max() < 1e-12
    assert "copy:copied" not in at[copy_start + 22]  # the next sentence is new again
    assert at[len(words) - 1] == {"token:<|endoftext|>", "topic:animals"}
    assert all("topic:animals" in at[i] for i in at)
    assert all(f"topic:{t}" not in at[i] for i in at for t in ("food", "tools", "nature"))


def test_every_token_carries_a_feature_of_its_own_besides_the_topic():
    """A neuron that detects one token type (`.`, `not`, end of text) has a feature to be
    recognised by: every word of the vocabulary, in generated documents, carries a feature that
    is not the topic, and a function word or the end of text carries its identity."""
    own = [i for i, name in enumerate(planted.FEATURES) if not name.startswith("topic:")]
    seen = set()
    for index in range(200):
        document = planted.generate_document(5, index)
        assert document.labels[:, own].any(axis=1).all()
        for word, row in zip(document.words, document.labels, strict=True):
            seen.add(word)
            if word in planted.IDENTITY_WORDS:
                assert row[planted.FEATURE_INDEX[f"token:{word}"]]
    assert seen == set(planted.VOCABULARY)
    identities = [name for name in planted.FEATURES if name.startswith("token:")]
    assert len(identities) == len(set(identities)) == len(planted.IDENTITY_WORDS)


def test_next_copied_marks_the_position_before_each_copied_token():
    """`copy:next_copied` is `copy:copied` shifted one position back, within each document."""
    copied = planted.FEATURE_INDEX["copy:copied"]
    following = planted.FEATURE_INDEX["copy:next_copied"]
    total = 0
    for index in range(100):
        labels = planted.generate_document(5, index).labels
        np.testing.assert_array_equal(labels[:-1, following], labels[1:, copied])
        assert not labels[-1, following]
        total += labels[:, following].sum()
    assert total > 0


# The words and labels of documents 0-19 (seed 0) that each generator version makes. Changing
# what the generator writes must change GENERATOR_VERSION (it is in the data's fingerprint, so
# runs prepared with the old labels are recomputed, never reused): add the new version's digest.
GENERATED_DIGESTS = {
    "planted-2": "bcd9b6f2694caaab28167dc880eb33c21848fded3bee51308b89395089a0ba23",
}


def test_what_the_generator_writes_is_tied_to_its_version():
    import hashlib

    from crate_jax.data.sources import source_fingerprint

    digest = hashlib.sha256("\n".join(planted.FEATURES).encode())
    for index in range(20):
        document = planted.generate_document(0, index)
        digest.update(" ".join(document.words).encode())
        digest.update(np.packbits(document.labels).tobytes())
    assert GENERATED_DIGESTS.get(planted.GENERATOR_VERSION) == digest.hexdigest(), (
        "the planted documents or labels changed: bump planted.GENERATOR_VERSION")
    assert source_fingerprint("planted:5", "unused")["generator"] == planted.GENERATOR_VERSION


def test_the_grammar_refuses_what_it_cannot_produce():
    with pytest.raises(ValueError, match="probability 0"):
        planted.score_words("the cats sees the dog .".split() + [END])  # no agreement
    with pytest.raises(ValueError, match="probability 0"):
        planted.score_words("the cat sees any dog .".split() + [END])  # 'any' outside negation


def test_the_parser_alone_refuses_what_the_grammar_never_emits():
    """`advance` accepts exactly the words its tables give a probability, so reading a document
    without scoring it cannot drift into a state the generator never reaches."""
    for words in (["the", "furry", "wild"], ["the", "cat", "does", "not", "sees"]):
        state = planted.ParserState()
        for word in words[:-1]:
            planted.advance(state, word)
        assert planted.next_token_probabilities(state)[:, planted.WORD_INDEX[words[-1]]].max() == 0
        with pytest.raises(ValueError, match="does not allow"):
            planted.advance(state, words[-1])


def test_every_next_token_distribution_sums_to_one_along_generated_documents():
    for index in range(20):
        document = planted.generate_document(3, index)
        state = planted.ParserState()
        for word in document.words:
            table = planted.next_token_probabilities(state)
            np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-12)
            planted.advance(state, word)


def test_floor_equals_the_brute_force_marginal_over_topics():
    """-log p(x_t | x_<t) = -log sum_k p(k) p_k(x_<=t) + log sum_k p(k) p_k(x_<t): the
    whole-prefix marginal, not the running posterior the generator uses."""
    for index in range(5):
        document = planted.generate_document(7, index)
        state = planted.ParserState()
        per_topic = []
        for word in document.words:
            per_topic.append(planted.next_token_probabilities(state)[:, planted.WORD_INDEX[word]])
            planted.advance(state, word)
        prefix = np.vstack([np.ones(len(planted.TOPICS)), np.cumprod(per_topic, axis=0)])
        marginal = prefix.mean(axis=1)
        brute_force = -np.log(marginal[1:] / marginal[:-1])
        np.testing.assert_allclose(document.floor_nll, brute_force, rtol=1e-9, atol=1e-12)


def test_generated_frequencies_follow_the_stated_probabilities():
    documents = [planted.generate_document(11, i) for i in range(3000)]
    first = [d.words[0] for d in documents]
    assert abs(first.count("the") / len(first) - 0.5) < 0.03
    topics = [d.topic for d in documents]
    assert all(abs(topics.count(t) / len(topics) - 0.25) < 0.03 for t in planted.TOPICS)
    # Nouns come from the document's topic with probability 0.8 + 0.2 / 4.
    own = total = 0
    for d in documents:
        nouns = [w for w in d.words if w in planted.NOUN_FORMS]
        own += sum(planted.NOUN_FORMS[w][0] == d.topic for w in nouns)
        total += len(nouns)
    assert abs(own / total - (planted.TOPIC_BIAS + (1 - planted.TOPIC_BIAS) / 4)) < 0.02
    # Monte Carlo: the mean floor is the entropy rate; knowing the topic can only help.
    floor = np.concatenate([d.floor_nll for d in documents])
    knowing_topic = []
    for d in documents:
        state = planted.ParserState()
        row = planted.TOPICS.index(d.topic)
        for word in d.words:
            knowing_topic.append(-math.log(
                planted.next_token_probabilities(state)[row, planted.WORD_INDEX[word]]))
            planted.advance(state, word)
    assert np.mean(knowing_topic) < floor.mean() < np.mean(knowing_topic) + 0.1


@pytest.fixture(scope="module")
def planted_arrays(tmp_path_factory):
    from configs import crate
    config = crate.get_config("tiny")
    config.data.update(dict(source="planted:400", tokenizer="word"))
    workdir = tmp_path_factory.mktemp("planted")
    return prepare_token_arrays(config.data, 128, workdir), workdir


def test_token_arrays_are_one_token_per_word_and_the_truth_lines_up(planted_arrays):
    from crate_jax.data.sources import PLANTED_SEED, planted_document_ids
    from crate_jax.data.token_arrays import is_validation
    from crate_jax.data.tokenizer import SavedTokenizer

    tokens, workdir = planted_arrays
    tokenizer = SavedTokenizer.load(workdir / "data" / "tokenizer.json")
    ids = [i for i in planted_document_ids("planted:400") if is_validation(i, 0.05)]
    documents = [planted.generate_document(PLANTED_SEED, int(i.split("/")[1])) for i in ids]
    words = [w for d in documents for w in d.words]
    decoded = [tokenizer.decode([t]) for t in np.asarray(tokens.validation)]
    assert decoded == [" " + word for word in words]  # each word with its separating space
    truth = read_planted_truth(workdir / "data")
    assert truth["labels"].shape == (len(words), len(planted.FEATURES))
    np.testing.assert_array_equal(truth["floor_nll"],
                                  np.concatenate([d.floor_nll for d in documents]))
    assert list(truth["features"]) == list(planted.FEATURES)


def test_reference_losses_match_a_hand_count():
    train = np.array([0, 1, 0, 1, 2, 0, 1])
    contexts, targets = np.array([0, 1, 2, 3]), np.array([1, 2, 0, 0])
    vocab = 4
    unigram, bigram = unigram_bigram_nll(train, contexts, targets, vocab)
    count = {w: list(train).count(w) for w in range(vocab)}
    p_uni = {w: (count[w] + 1) / (len(train) + vocab) for w in range(vocab)}
    pairs = list(zip(train[:-1], train[1:], strict=True))
    for k, (h, w) in enumerate(zip(contexts, targets, strict=True)):
        assert unigram[k] == pytest.approx(-math.log(p_uni[w]))
        seen = sum(1 for a, _ in pairs if a == h)
        followers = len({b for a, b in pairs if a == h})
        expected = ((sum(1 for p in pairs if p == (h, w)) + followers * p_uni[w])
                    / (seen + followers)) if seen else p_uni[w]
        assert bigram[k] == pytest.approx(-math.log(expected))


def test_planted_references_are_ordered_floor_bigram_unigram(planted_arrays):
    tokens, workdir = planted_arrays
    references = reference_losses(tokens, workdir / "data", num_windows=8, seq_len=64)
    assert references["tokens"] == 8 * 64
    assert references["floor"] < references["bigram"] < references["unigram"]
    truth = read_planted_truth(workdir / "data")
    assert references["floor"] == pytest.approx(truth["floor_nll"][1:8 * 64 + 1].mean())


@pytest.mark.parametrize("tokenizer, vocab_size, message", [
    ("bpe", 128, "needs data.tokenizer='word'"),
    ("word", 100, "model.vocab_size=100"),
])
def test_planted_settings_that_cannot_line_up_fail_before_any_work(tmp_path, tokenizer,
                                                                    vocab_size, message):
    from configs import crate
    from crate_jax.data.token_arrays import DataPreparationError

    config = crate.get_config("tiny")
    config.data.update(dict(source="planted:50", tokenizer=tokenizer))
    with pytest.raises(DataPreparationError, match=message):
        prepare_token_arrays(config.data, vocab_size, tmp_path)
    assert not (tmp_path / "data").exists()
