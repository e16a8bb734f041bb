"""The data stage refuses what it cannot stand behind: token arrays without the tokenizer that
made them, a source too small for both splits, and files that are not UTF-8 text.

Real files and real tokenizers throughout; every corpus is a few kilobytes, so each test takes
well under a second.
"""

import hashlib
import json

import numpy as np
import pytest
from run_helpers import data_config

from crate_jax.data.sources import SourceError, read_documents
from crate_jax.data.token_arrays import (
    DataPreparationError,
    is_validation,
    prepare_token_arrays,
)
from crate_jax.data.tokenizer import SavedTokenizer, train_byte_level_bpe

TEXTS = [f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7} times. "
         f"Returns the value of x when y is None; raises ValueError otherwise. {i} " * 3
         for i in range(30)]


def _corpus(folder, texts=TEXTS):
    folder.mkdir()
    for index, text in enumerate(texts):
        (folder / f"doc_{index:03d}.txt").write_text(text)
    return f"text:{folder}/*.txt"


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- case 1: the tokenizer is tied to the token arrays -------------------------------------------

def test_token_arrays_are_reused_only_with_the_tokenizer_that_made_them(tmp_path):
    config = data_config(_corpus(tmp_path / "corpus"))
    workdir = tmp_path / "run"
    prepare_token_arrays(config, 300, workdir)
    data = workdir / "data"
    tokenizer_file, manifest_file = data / "tokenizer.json", data / "tokens.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["tokenizer_fingerprint"] == _sha256(tokenizer_file)
    original = tokenizer_file.read_bytes()

    tokenizer_file.unlink()
    with pytest.raises(DataPreparationError,
                       match=rf"{tokenizer_file} is missing.*restore it.*delete {data}"):
        prepare_token_arrays(config, 300, workdir)
    assert not tokenizer_file.exists()  # not silently retrained from no text

    train_byte_level_bpe(["some other text entirely, " * 20], 300).save(tokenizer_file)
    with pytest.raises(DataPreparationError,
                       match=rf"{tokenizer_file} is not the tokenizer.*restore it"):
        prepare_token_arrays(config, 300, workdir)

    tokenizer_file.write_bytes(original)
    prepare_token_arrays(config, 300, workdir)  # the right one again: reused

    # A workdir prepared before fingerprints were recorded is still reused as it is...
    del manifest["tokenizer_fingerprint"]
    manifest_file.write_text(json.dumps(manifest))
    prepare_token_arrays(config, 300, workdir)
    # ...but its tokenizer missing is still an error, not a tokenizer trained on nothing.
    tokenizer_file.unlink()
    with pytest.raises(DataPreparationError, match="is missing"):
        prepare_token_arrays(config, 300, workdir)


def test_a_tokenizer_left_by_an_unfinished_preparation_is_set_aside_not_reused(tmp_path):
    """Killed after the tokenizer was saved but before tokens.json: the rerun (here with another
    corpus) must not tokenize with a tokenizer trained on the first one."""
    workdir = tmp_path / "run"
    (workdir / "data").mkdir(parents=True)
    unfinished = train_byte_level_bpe(["some other text entirely, " * 20], 300)
    unfinished.save(workdir / "data" / "tokenizer.json")
    arrays = prepare_token_arrays(data_config(_corpus(tmp_path / "corpus")), 300, workdir)
    aside = workdir / "data" / "tokenizer.unfinished-1.json"
    assert SavedTokenizer.load(aside).vocab_size == unfinished.vocab_size
    assert arrays.manifest["tokenizer_fingerprint"] == _sha256(workdir / "data" / "tokenizer.json")
    assert _sha256(aside) != arrays.manifest["tokenizer_fingerprint"]


# --- case 2: any source with text gives both splits, or stops before tokens.json ----------------

def test_a_single_file_that_hashes_into_validation_is_split_within_its_text(tmp_path):
    name = next(f"one_{i}.txt" for i in range(100) if is_validation(f"one_{i}.txt", 0.2))
    # The last fifth of the text holds words found nowhere before it.
    text = "the cat sat on the mat and the dog sat on the log " * 40 + "zebra quokka " * 30
    (tmp_path / name).write_text(text)
    config = data_config(f"text:{tmp_path}/{name}", tokenizer="word")
    arrays = prepare_token_arrays(config, 300, tmp_path / "run")
    total = arrays.train.size + arrays.validation.size
    assert 0.1 < arrays.validation.size / total < 0.3
    splits = arrays.manifest["splits"]
    assert splits["train"]["bytes"] + splits["validation"]["bytes"] == len(text.encode())
    assert "held_out" in splits["validation"]

    # The tokenizer learnt only the training part: the validation words are unknown to it.
    tokenizer = SavedTokenizer.load(tmp_path / "run" / "data" / "tokenizer.json")
    unknown = tokenizer.encode("zebra")
    assert unknown == tokenizer.encode("quokka") and len(unknown) == 1
    assert tokenizer.encode("cat") != unknown
    assert unknown[0] in set(arrays.validation.tolist())

    again = prepare_token_arrays(config, 300, tmp_path / "run")  # reusable, no empty file
    np.testing.assert_array_equal(again.train, arrays.train)


def test_a_source_too_small_for_two_splits_stops_before_writing_tokens(tmp_path):
    (tmp_path / "tiny.txt").write_text("x")
    (tmp_path / "empty.txt").write_text("")
    for pattern, named in (("tiny.txt", "1 character"), ("empty.txt", "no text")):
        workdir = tmp_path / pattern.replace(".", "_")
        with pytest.raises(DataPreparationError, match=rf"text:{tmp_path}/{pattern}.*{named}"):
            prepare_token_arrays(data_config(f"text:{tmp_path}/{pattern}"), 300, workdir)
        assert not (workdir / "data" / "tokens.json").exists()


def test_a_planted_corpus_too_small_for_a_validation_split_is_refused(tmp_path):
    config = data_config("planted:1", tokenizer="word", val_fraction=0.05)
    with pytest.raises(DataPreparationError, match="planted:1.*validation.*documents"):
        prepare_token_arrays(config, 128, tmp_path)
    assert not (tmp_path / "data" / "tokens.json").exists()


# --- case 3: text files are UTF-8 text, whatever their names -------------------------------------

@pytest.mark.parametrize("name", ["notes.txt", "notes.md", "notes"])
@pytest.mark.parametrize("content, named", [
    ("Café crème, naïve façade. ".encode("latin-1") * 20, "not UTF-8"),
    (bytes(range(256)) * 4, "NUL byte"),
    ("UTF-16 text is not UTF-8".encode("utf-16-le"), "NUL byte"),
], ids=["latin1", "binary", "utf16"])
def test_a_file_that_is_not_utf8_text_is_refused_naming_it(tmp_path, name, content, named):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=rf"{path}.*{named}.*at byte \d+"):
        list(read_documents(f"text:{path}", tmp_path))


def test_utf8_is_read_whatever_the_name_and_a_bad_file_stops_the_data_stage_first(tmp_path):
    path = tmp_path / "tokens.bin"
    path.write_bytes("\ufeffHé 🙂, naïve\n".encode("utf-8"))  # with a byte order mark
    assert [d.text for d in read_documents(f"text:{path}", tmp_path)] == ["Hé 🙂, naïve\n"]

    corpus = _corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "zzz_photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(SourceError, match="zzz_photo.txt"):
        prepare_token_arrays(data_config(corpus), 300, tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()  # refused before any tokenizer training
