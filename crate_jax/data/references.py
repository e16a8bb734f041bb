"""Reference losses a reader can judge a validation loss by, on exactly the same tokens.

A model's validation loss means little alone: 5.6 nats/token is good or bad depending on the
text. Next to it we put what counting alone achieves on the same validation targets, with the
same tokenizer: a unigram model (add-one smoothed) and a bigram model (Witten-Bell interpolated
with that unigram; no tuned constant, so no validation text leaks into it), both fitted on the
training tokens. A model that does not beat the bigram has not learned enough for its neurons to
say anything. On the planted corpus the generator's own negative log-likelihood is the floor.
It conditions on each document from its start, while a validation window may begin mid-document
(29% of targets at seq_len 128, 55% at 64: their document's topic evidence, or a copied word's
source, lies before the window), so on all targets (`floor`) it is a lower bound that no model
seeing only its window reaches. `floor_in_window` is the floor on the targets whose document
starts inside their window (`document_in_window`), which such a model can reach exactly; the loss
to set beside it must be measured on the same targets (`interp.ground_truth.loss_above_floor`
does).
"""

from __future__ import annotations

import numpy as np

from crate_jax.data.token_arrays import TokenArrays, read_planted_truth

# Counting the first this many training tokens is plenty for a reference and keeps a corpus of
# billions of tokens from costing minutes and gigabytes here.
MAX_FITTED_TOKENS = 20_000_000


def evaluation_targets(num_windows: int, seq_len: int) -> slice:
    """The validation positions the training loop's validation loss predicts.

    Window i is `validation[i * seq_len : i * seq_len + seq_len + 1]` (`sampler.evaluation_windows`)
    and predicts its last `seq_len` tokens, so the targets are positions 1 .. windows * seq_len.
    """
    return slice(1, num_windows * seq_len + 1)


def document_in_window(windows: np.ndarray, end_of_text: int) -> np.ndarray:
    """`[W, L - 1]` for `windows` `[W, L]` of token ids, each predicting its positions 1 .. L - 1:
    True where the target's document starts inside its window, i.e. an end-of-text token (the
    end of the document before) is among the positions its prediction sees (0 .. j - 1).

    There the whole document so far is in view; planted documents are independent, so the
    floor `-log p(x_t | document so far)` is exactly the best prediction from the window. A
    document that starts at position 0 does not count: its window does not show that it starts
    there.
    """
    return np.logical_or.accumulate(np.asarray(windows)[:, :-1] == end_of_text, axis=1)


def unigram_bigram_nll(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray,
                       vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-target negative log-likelihoods (nats) of the count-based unigram and bigram models.

    unigram: p(w) = (c(w) + 1) / (N + V). bigram (Witten-Bell): p(w | h) = (c(h, w) + T(h) p(w))
    / (c(h) + T(h)), T(h) the number of distinct words seen after h; p(w) when h was never seen.
    """
    train = np.asarray(train, np.int64)
    unigram_counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    unigram = (unigram_counts + 1) / (train.size + vocab_size)

    pair_codes, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    history_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    distinct_followers = np.bincount(pair_codes // vocab_size,
                                     minlength=vocab_size).astype(np.float64)

    contexts, targets = np.asarray(contexts, np.int64), np.asarray(targets, np.int64)
    wanted = contexts * vocab_size + targets
    found = np.searchsorted(pair_codes, wanted)
    found = np.minimum(found, pair_codes.size - 1)
    seen_pairs = np.where(pair_codes[found] == wanted, pair_counts[found], 0)
    history, followers = history_counts[contexts], distinct_followers[contexts]
    target_unigram = unigram[targets]
    with np.errstate(invalid="ignore", divide="ignore"):
        bigram = np.where(history > 0,
                          (seen_pairs + followers * target_unigram) / (history + followers),
                          target_unigram)
    return -np.log(target_unigram), -np.log(bigram)


def reference_losses(tokens: TokenArrays, data_directory, num_windows: int, seq_len: int) -> dict:
    """The references for a validation loss over `num_windows` windows of `seq_len` tokens.

    Returns `{"unigram", "bigram", "floor", "floor_in_window", "in_window_fraction",
    "floor_source", "tokens", "seq_len", "windows", "fitted_on_tokens"}` (nats/token; the floors
    and the fraction of targets `floor_in_window` is taken over are None unless the data is
    planted).
    """
    positions = evaluation_targets(num_windows, seq_len)
    evaluated = np.asarray(tokens.validation[:positions.stop])  # only what the loss reads
    targets, contexts = evaluated[positions], evaluated[:-1]
    train = np.asarray(tokens.train[:MAX_FITTED_TOKENS])
    unigram, bigram = unigram_bigram_nll(train, contexts, targets,
                                         tokens.manifest["tokenizer_vocab_size"])
    truth = read_planted_truth(data_directory)
    floor = floor_in_window = in_window_fraction = None
    if truth is not None:
        floor_nll = truth["floor_nll"][positions]
        floor = float(np.mean(floor_nll))
        windows = np.lib.stride_tricks.sliding_window_view(evaluated, seq_len + 1)[::seq_len]
        in_window = document_in_window(windows[:num_windows],
                                       tokens.manifest["end_of_text"]).reshape(-1)
        in_window_fraction = float(in_window.mean())
        floor_in_window = float(np.mean(floor_nll[in_window])) if in_window.any() else None
    return {"unigram": float(unigram.mean()), "bigram": float(bigram.mean()), "floor": floor,
            "floor_in_window": floor_in_window, "in_window_fraction": in_window_fraction,
            "floor_source": None if truth is None else "planted generator (exact)",
            "tokens": int(targets.size), "seq_len": seq_len, "windows": num_windows,
            "fitted_on_tokens": int(train.size)}
