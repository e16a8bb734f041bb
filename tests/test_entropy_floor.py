"""The planted floor a model is compared with is one a model that sees only its window can reach.

The floor of a target conditions on its whole document so far. A model sees its window only, so
on a target whose document began before the window (its topic's evidence, a copied word's
source out of view) no model reaches the floor. The comparison counts only the targets whose
document starts inside the window; the test builds the best window-only predictor there (the
generator's own Bayesian predictive, restarted at every end-of-text the window shows, uniform
before it) and checks that it meets the floor exactly there.
"""

import math

import numpy as np
import pytest
from run_helpers import planted_token_arrays

from crate_jax.data import planted
from crate_jax.data.references import document_in_window, reference_losses
from crate_jax.data.token_arrays import read_planted_truth
from crate_jax.data.tokenizer import load_saved_tokenizer
from crate_jax.interp.activations.capture import evaluation_sequences
from crate_jax.interp.ground_truth import loss_above_floor

SEQ_LEN = 64


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory):
    """Real planted token arrays (word tokenizer), their truth, and words by token id."""
    workdir = tmp_path_factory.mktemp("planted")
    tokens = planted_token_arrays(workdir, 1000)
    tokenizer = load_saved_tokenizer("word", workdir / "data", 128)
    return tokens, workdir / "data", tokenizer


def window_predictor_nll(windows: np.ndarray, tokenizer) -> np.ndarray:
    """`[W, L - 1]`: nats of the best prediction of positions 1 .. L - 1 from the window alone
    where the window shows the document's start; a uniform guess where it does not."""
    uniform = math.log(len(planted.VOCABULARY))
    nll = np.full((windows.shape[0], windows.shape[1] - 1), uniform)
    for w, window in enumerate(windows):
        state = posterior = None
        for j, token in enumerate(window):
            if j and state is not None:
                word = tokenizer.decode([int(token)]).strip()
                table = planted.next_token_probabilities(state)
                nll[w, j - 1] = posterior.negative_log_likelihood(table, word)
                planted.advance(state, word)
            if token == tokenizer.end_of_text:  # the next document starts in view
                state, posterior = planted.ParserState(), planted.TopicPosterior()
    return nll


def test_the_best_window_only_predictor_meets_the_floor_on_the_counted_targets(planted_data):
    tokens, data_directory, tokenizer = planted_data
    truth = read_planted_truth(data_directory)
    sequences = evaluation_sequences(tokens.validation, SEQ_LEN, 32)
    nll = window_predictor_nll(sequences, tokenizer)
    result = loss_above_floor(nll, truth["floor_nll"][:sequences.size],
                              truth["labels"][:sequences.size],
                              [str(name) for name in truth["features"]],
                              sequences=sequences, end_of_text=tokenizer.end_of_text)
    assert result["excess"] == pytest.approx(0.0, abs=1e-9)
    assert result["model_loss"] == pytest.approx(result["floor"], abs=1e-9)
    assert result["targets"] == sequences.shape[0] * (SEQ_LEN - 1)
    assert 0.25 * result["targets"] < result["tokens"] < result["targets"]


def test_every_counted_target_has_its_whole_document_in_its_window(planted_data):
    """Checked against document starts read off the truth (each end-of-text row ends one)."""
    tokens, data_directory, tokenizer = planted_data
    truth = read_planted_truth(data_directory)
    sequences = evaluation_sequences(tokens.validation, SEQ_LEN, 32)
    ends = truth["labels"][:sequences.size, planted.FEATURES.index(
        f"token:{planted.END_OF_DOCUMENT}")]
    document_start = np.zeros(sequences.size, int)  # of the document each position belongs to
    for position in range(1, sequences.size):
        document_start[position] = position if ends[position - 1] \
            else document_start[position - 1]
    counted = document_in_window(sequences, tokenizer.end_of_text)
    for s in range(sequences.shape[0]):
        for j in range(1, SEQ_LEN):
            start = document_start[s * SEQ_LEN + j]
            assert counted[s, j - 1] == (start > s * SEQ_LEN), (s, j)


def test_references_give_the_floor_on_the_targets_a_window_can_reach(planted_data):
    tokens, data_directory, tokenizer = planted_data
    references = reference_losses(tokens, data_directory, num_windows=8, seq_len=SEQ_LEN)
    truth = read_planted_truth(data_directory)
    evaluated = np.asarray(tokens.validation[:8 * SEQ_LEN + 1])
    windows = np.stack([evaluated[i * SEQ_LEN:(i + 1) * SEQ_LEN + 1] for i in range(8)])
    reachable = document_in_window(windows, tokenizer.end_of_text)
    best = window_predictor_nll(windows, tokenizer)[reachable]
    assert references["floor_in_window"] == pytest.approx(best.mean(), abs=1e-9)
    assert references["in_window_fraction"] == pytest.approx(reachable.mean())
    assert 0.25 < references["in_window_fraction"] < 1.0
    # The floor over all targets (what the validation loss covers) is unchanged: a lower bound.
    assert references["floor"] == pytest.approx(truth["floor_nll"][1:8 * SEQ_LEN + 1].mean())
