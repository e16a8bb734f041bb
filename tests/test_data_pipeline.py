"""Tokenizer, token arrays and the batch sampler: deterministic, resumable, and loud when wrong."""

import json

import numpy as np
import pytest
from run_helpers import data_config

from crate_jax.data.sampler import WindowSampler, evaluation_windows
from crate_jax.data.token_arrays import (
    DataPreparationError,
    is_validation,
    prepare_token_arrays,
)
from crate_jax.data.tokenizer import (
    SavedTokenizer,
    TokenizerError,
    load_or_train_tokenizer,
    train_byte_level_bpe,
)

TEXTS = [f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7} times.\n"
         f"Returns the value of x when y is None; raises ValueError otherwise. {i}" * 3
         for i in range(60)]


@pytest.fixture
def text_corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index, text in enumerate(TEXTS):
        (folder / f"doc_{index:03d}.txt").write_text(text)
    return f"text:{folder}/*.txt"


def test_bpe_is_deterministic_and_round_trips_any_text():
    first, second = (train_byte_level_bpe(TEXTS, vocab_size=400) for _ in range(2))
    sample = "Unseen: naïve café, emoji 🙂 and tabs\tstay intact."
    assert first.encode(sample) == second.encode(sample)
    assert first.decode(first.encode(sample)) == sample
    assert first.vocab_size == 400 and first.end_of_text == 0
    assert first.encode_batch([sample, TEXTS[0]]) == [first.encode(sample),
                                                       first.encode(TEXTS[0])]


def test_tokenizer_is_saved_in_the_workdir_and_reused(tmp_path):
    trained = load_or_train_tokenizer("bpe", tmp_path, 300, TEXTS)
    assert (tmp_path / "tokenizer.json").exists()
    reused = load_or_train_tokenizer("bpe", tmp_path, 300, iter(()))  # no texts: must not retrain
    assert reused.encode(TEXTS[3]) == trained.encode(TEXTS[3])
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        SavedTokenizer.load(tmp_path / "tokenizer.json")


def test_gpt2_tokenizer_without_tiktoken_or_its_files_is_a_clear_error(tmp_path):
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(TokenizerError, match="needs the tiktoken package"):
            load_or_train_tokenizer("gpt2", tmp_path, 50304, [])
    else:  # installed: offline it cannot fetch the BPE files unless they are cached
        try:
            tokenizer = load_or_train_tokenizer("gpt2", tmp_path, 50304, [])
        except TokenizerError as error:
            assert "TIKTOKEN_CACHE_DIR" in str(error)
        else:
            assert tokenizer.vocab_size == 50257
    load_or_train_tokenizer("bpe", tmp_path / "other", 400, TEXTS)
    with pytest.raises(TokenizerError, match="has 400 tokens but model.vocab_size=300"):
        load_or_train_tokenizer("bpe", tmp_path / "other", 300, [])  # reused, now too big
    with pytest.raises(TokenizerError, match="data.tokenizer='sentencepiece'"):
        load_or_train_tokenizer("sentencepiece", tmp_path, 300, TEXTS)


def test_token_arrays_split_by_document_and_are_reused(tmp_path, text_corpus):
    arrays = prepare_token_arrays(data_config(text_corpus), 512, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "data" / "tokens.json").read_text())
    assert arrays.train.dtype == np.uint16
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == len(TEXTS)
    assert 0 < splits["validation"]["documents"] < len(TEXTS) // 2
    assert arrays.train.size == splits["train"]["tokens"]
    assert arrays.validation.size == splits["validation"]["tokens"]
    end_of_text = manifest["end_of_text"]
    assert (arrays.validation == end_of_text).sum() == splits["validation"]["documents"]
    assert 1.0 < arrays.bytes_per_token() < 8.0
    assert manifest["fingerprint"]  # what produced the data is recorded

    mtime = (tmp_path / "run" / "data" / "train.bin").stat().st_mtime_ns
    again = prepare_token_arrays(data_config(text_corpus), 512, tmp_path / "run")
    np.testing.assert_array_equal(again.train, arrays.train)
    assert (tmp_path / "run" / "data" / "train.bin").stat().st_mtime_ns == mtime

    elsewhere = prepare_token_arrays(data_config(text_corpus), 512, tmp_path / "run2")
    np.testing.assert_array_equal(elsewhere.validation, arrays.validation)  # deterministic


def test_other_data_settings_in_the_same_workdir_are_refused(tmp_path, text_corpus):
    prepare_token_arrays(data_config(text_corpus), 512, tmp_path)
    with pytest.raises(DataPreparationError, match="val_fraction: 0.2 there, 0.5 now"):
        prepare_token_arrays(data_config(text_corpus, val_fraction=0.5), 512, tmp_path)
    (tmp_path / "data" / "train.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataPreparationError, match="train.bin should hold"):
        prepare_token_arrays(data_config(text_corpus), 512, tmp_path)


def test_single_document_source_holds_out_the_tail(tmp_path):
    (tmp_path / "one.txt").write_text(" ".join(TEXTS))
    arrays = prepare_token_arrays(data_config(f"text:{tmp_path}/one.txt"), 300, tmp_path / "r")
    total = arrays.train.size + arrays.validation.size
    assert abs(arrays.validation.size / total - 0.2) < 0.02  # the last fifth of the characters
    assert arrays.manifest["splits"]["validation"]["held_out"] == (
        "tail of the text, cut at a whitespace")


def test_validation_assignment_is_fixed_and_roughly_the_fraction():
    ids = [f"module_{i}.py" for i in range(4000)]
    chosen = [is_validation(i, 0.05) for i in ids]
    assert chosen == [is_validation(i, 0.05) for i in ids]
    assert 0.035 < np.mean(chosen) < 0.065


def test_sampler_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    sampler = WindowSampler(tokens, seq_len=16, global_batch=8, seed=3)
    batch = sampler.batch(5)
    assert batch.shape == (8, 17) and batch.dtype == np.int32
    np.testing.assert_array_equal(np.diff(batch, axis=1), 1)  # contiguous windows
    np.testing.assert_array_equal(batch, WindowSampler(tokens, 16, 8, seed=3).batch(5))
    assert not np.array_equal(batch, sampler.batch(6))
    assert not np.array_equal(batch, WindowSampler(tokens, 16, 8, seed=4).batch(5))


def test_process_slices_make_up_the_global_batch():
    tokens = np.arange(5_000, dtype=np.uint16)
    whole = WindowSampler(tokens, 8, 12, seed=0).batch(2)
    parts = [WindowSampler(tokens, 8, 12, seed=0, process_index=i, process_count=3).batch(2)
             for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="not divisible by the 5 processes"):
        WindowSampler(tokens, 8, 12, seed=0, process_count=5)


def test_evaluation_windows_are_consecutive_and_bounded():
    windows = evaluation_windows(np.arange(100, dtype=np.uint16), seq_len=10, max_windows=4)
    assert windows.shape == (4, 11)
    np.testing.assert_array_equal(windows[1], np.arange(10, 21))
    assert evaluation_windows(np.arange(100), 10, 50).shape == (9, 11)
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluation_windows(np.arange(5), 10, 4)
