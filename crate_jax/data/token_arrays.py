"""Tokenize a source once into flat token arrays on disk: `train.bin` and `validation.bin`.

Documents are split into train and validation by a hash of their id (independent of any training
seed, so every variant of a study is validated on the same text), tokenized, joined with the
end-of-text token and written as raw uint16 (uint32 for vocabularies above 65536). A source with
too few documents for that is split within its text instead (`_SourceSplit`). `tokens.json`
beside them records what produced them, the tokenizer file's sha256 among it; a rerun with the
same data settings reuses the arrays, different settings in the same workdir (or another
tokenizer beside them) are an error rather than a silent mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crate_jax.atomic_files import atomic_path, move_aside, write_json_atomically
from crate_jax.data import planted
from crate_jax.data.sources import (
    Document,
    is_planted,
    planted_document_ids,
    planted_ground_truth,
    read_documents,
    source_fingerprint,
)
from crate_jax.data.tokenizer import (
    FILE_KINDS,
    TOKENIZER_KINDS,
    TRAINED_KINDS,
    TextTokenizer,
    TokenizerError,
    load_or_train_tokenizer,
    smallest_vocab_size,
)
from crate_jax.layout import DataLayout, RunLayout

SPLITS = ("train", "validation")
_ENCODE_CHUNK = 512  # documents per `encode_batch` call: parallel, yet bounded memory
_WHITESPACE = re.compile(r"\s")


class DataPreparationError(RuntimeError):
    """Token arrays that cannot be (re)used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class TokenArrays:
    """The prepared token streams (memory-mapped) and what one token is worth in bytes."""

    train: np.ndarray
    validation: np.ndarray
    manifest: dict

    def bytes_per_token(self, split: str = "validation") -> float:
        """UTF-8 bytes of source text per token, to turn nats/token into bits per byte."""
        info = self.manifest["splits"][split]
        return info["bytes"] / info["tokens"]


def is_validation(document_id: str, fraction: float) -> bool:
    """A fixed, seed-independent assignment of a document to the validation split."""
    digest = hashlib.sha256(document_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def default_data_dir() -> Path:
    """Where prepared TFDS data sets live unless `data.data_dir` says otherwise."""
    return Path(os.environ.get("CRATE_JAX_DATA_DIR", "~/.cache/crate_jax/datasets")).expanduser()


def resolve_data_dir(configured: str) -> Path:
    return Path(configured).expanduser() if configured else default_data_dir()


def prepare_token_arrays(data_config, vocab_size: int, workdir: Path) -> TokenArrays:
    """The run's token arrays under `workdir/data`, built on first use and reused afterwards.

    `data_config` is the experiment's `config.data` (source, data_dir, tokenizer, val_fraction).
    """
    check_data_settings(data_config, vocab_size)
    data = RunLayout(workdir).data
    directory = data.directory
    settings = {"source": data_config.source, "tokenizer": data_config.tokenizer,
                "vocab_size": vocab_size, "val_fraction": data_config.val_fraction}
    manifest_path = data.manifest
    if manifest_path.exists():
        return _load_prepared(directory, settings)

    data_dir = resolve_data_dir(data_config.data_dir)
    fraction = data_config.val_fraction
    source = data_config.source
    split = _split_source_text(source, data_dir, fraction)
    if data_config.tokenizer in TRAINED_KINDS:
        _set_aside_unfinished_tokenizer(directory)
    tokenizer = load_or_train_tokenizer(data_config.tokenizer, directory, vocab_size,
                                        (doc.text for doc in split.documents("train")))
    dtype = token_dtype(vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    splits = {name: _write_split(split.documents(name), tokenizer, data.split(name), dtype)
              for name in SPLITS}
    if split.text_cut is not None:
        splits["validation"]["held_out"] = "tail of the text, cut at a whitespace"
    if is_planted(source):
        validation_ids = [doc_id for doc_id in planted_document_ids(source)
                          if is_validation(doc_id, fraction)]
        _write_planted_truth(data.planted_truth, validation_ids,
                             splits["validation"]["tokens"])
    manifest = {**settings, "dtype": dtype.name, "splits": splits,
                "fingerprint": source_fingerprint(source, data_dir),
                "tokenizer_fingerprint": tokenizer_fingerprint(data_config.tokenizer, directory),
                "end_of_text": tokenizer.end_of_text, "tokenizer_vocab_size": tokenizer.vocab_size}
    write_json_atomically(manifest_path, manifest)  # written last: its presence means "complete"
    return _load_prepared(directory, settings)


def _set_aside_unfinished_tokenizer(directory: Path) -> None:
    """A `tokenizer.json` without `tokens.json` was left by a preparation that stopped before it
    finished, perhaps under other data settings, so nothing says what it was trained on: it is
    moved aside (`tokenizer.unfinished-<N>.json`) and trained again (deterministic for the same
    settings), never reused unchecked."""
    path = DataLayout(directory).tokenizer
    if not path.exists():
        return
    aside = move_aside(path, DataLayout(directory).unfinished_tokenizer)
    print(f"data: {path} was left by an unfinished preparation; moved it to {aside.name} and "
          "training the tokenizer again", flush=True)


def tokenizer_fingerprint(kind: str, directory: Path) -> str | None:
    """The sha256 hex of the tokenizer's file in `directory` (trained or imported); None for
    GPT-2's BPE through tiktoken, a published vocabulary with no file here.

    Token ids mean something only with the exact file that made them: the manifest records this
    as `tokenizer_fingerprint`, reuse checks it, and later stages record it with their outputs.
    """
    if kind not in FILE_KINDS:
        return None
    return hashlib.sha256(DataLayout(directory).tokenizer.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _SourceSplit:
    """Which text of a source goes to which split.

    By document (`text_cut` None), the normal case: a hash of each document's id decides, so no
    document is cut and the tokenizer, trained on the training documents only, never sees
    validation text. A source with too few documents for both splits to get one (a single file,
    a handful) is split within its text instead: validation is its last `fraction` of
    characters, from `text_cut` = (document index, character offset) moved on to the next
    whitespace so that no word is cut in two, and the tokenizer is trained on the text before.
    """

    source: str
    data_dir: Path
    fraction: float
    text_cut: tuple[int, int] | None

    def documents(self, split: str) -> Iterator[Document]:
        """The documents of `split` (or their parts on its side of the cut), in source order."""
        validation = split == "validation"
        documents = read_documents(self.source, self.data_dir)
        if self.text_cut is None:
            return (doc for doc in documents if is_validation(doc.id, self.fraction) == validation)
        return _side_of_cut(documents, self.text_cut, validation)


def _split_source_text(source: str, data_dir: Path, fraction: float) -> _SourceSplit:
    """How `source` is split (see `_SourceSplit`), or a DataPreparationError if it cannot be.

    Reads the whole source once before any work, so that an unreadable file or a source too
    small for two splits fails before a tokenizer is trained or any file is written.
    """
    documents_per_split: Counter[bool] = Counter()
    characters = 0
    for document in read_documents(source, data_dir):
        documents_per_split[is_validation(document.id, fraction)] += 1
        characters += len(document.text)
    if len(documents_per_split) == 2:
        return _SourceSplit(source, data_dir, fraction, text_cut=None)
    if is_planted(source):
        empty = "validation" if documents_per_split[False] else "training"
        raise DataPreparationError(
            f"data.source={source!r} gives no {empty} documents at data.val_fraction={fraction}, "
            "and its ground truth needs whole validation documents; use more documents (the "
            "default 'planted' has 20000)")
    if characters < 2:
        amount = "no text" if characters == 0 else "1 character of text"
        raise DataPreparationError(
            f"data.source={source!r} holds {amount}: too little to split into training and "
            "validation text; point it at more text")
    position = characters - max(1, int(characters * fraction))
    for index, document in enumerate(read_documents(source, data_dir)):
        if position < len(document.text):
            return _SourceSplit(source, data_dir, fraction, text_cut=(index, position))
        position -= len(document.text)
    raise DataPreparationError(f"data.source={source!r} changed while it was read; rerun")


def _side_of_cut(documents: Iterator[Document], cut: tuple[int, int],
                 validation: bool) -> Iterator[Document]:
    cut_index, offset = cut
    for index, document in enumerate(documents):
        if index == cut_index:
            whitespace = _WHITESPACE.search(document.text, offset)
            at = whitespace.start() if whitespace else offset
            part = document.text[at:] if validation else document.text[:at]
            if part:
                yield dataclasses.replace(document, text=part)
        elif (index > cut_index) == validation:
            yield document


def _write_split(documents: Iterator[Document], tokenizer: TextTokenizer, path: Path,
                 dtype: np.dtype) -> dict:
    """Tokenizes `documents` into `path` (each followed by end-of-text); returns counts."""
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        chunk: list[str] = []

        def flush() -> None:
            for ids in tokenizer.encode_batch(chunk):
                # Not `tofile`: its short write on a full disk is an OSError without an errno.
                file.write(np.asarray([*ids, tokenizer.end_of_text], dtype).tobytes())
                counts["tokens"] += len(ids) + 1
            chunk.clear()

        for document in documents:
            chunk.append(document.text)
            counts["documents"] += 1
            counts["bytes"] += len(document.text.encode("utf-8"))
            if len(chunk) == _ENCODE_CHUNK:
                flush()
        flush()
    return counts


def check_data_settings(data_config, vocab_size: int) -> None:
    """What data preparation can refuse before it reads or trains anything (the entry runs it
    up front too): an unknown tokenizer, a vocabulary smaller than the tokenizer's smallest, and
    the planted corpus's needs."""
    kind = data_config.tokenizer
    if kind not in TOKENIZER_KINDS:
        raise TokenizerError(f"data.tokenizer={kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
    if is_planted(data_config.source):  # first: its tokenizer is the fix to name
        _check_planted_settings(kind, vocab_size)
    smallest = smallest_vocab_size(kind)
    if vocab_size < smallest:
        raise TokenizerError(f"model.vocab_size={vocab_size} is below the {smallest} tokens any "
                             f"data.tokenizer={kind!r} has; raise model.vocab_size")


def _check_planted_settings(tokenizer: str, vocab_size: int) -> None:
    """The planted corpus's labels describe words: one token must be one word, and every word
    (plus end-of-text and the unknown-word token) must fit the vocabulary."""
    if tokenizer != "word":
        raise DataPreparationError(
            f"data.source='planted' needs data.tokenizer='word' (one token per word, so the "
            f"ground-truth labels line up with the tokens), not {tokenizer!r}")
    needed = len(planted.VOCABULARY) + 1  # its words, end-of-text, and the unknown-word token
    if vocab_size < needed:
        raise DataPreparationError(f"the planted corpus has {needed} tokens but model.vocab_size"
                                   f"={vocab_size}; use --config.model.vocab_size=128")


def _write_planted_truth(path: Path, validation_ids: list[str], tokens: int) -> None:
    """Labels and floor of every validation token: one row per word plus the end-of-text token
    that `_write_split` appends, so row i describes `validation.bin[i]`."""
    documents = list(planted_ground_truth(validation_ids))
    labels = np.concatenate([document.labels for document in documents])
    floor = np.concatenate([document.floor_nll for document in documents])
    if floor.size != tokens:
        raise DataPreparationError(
            f"planted ground truth covers {floor.size} tokens but validation.bin holds {tokens}: "
            "use data.tokenizer='word' with the planted source (one token per word)")
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, labels=labels, floor_nll=floor.astype(np.float64),
                 features=np.asarray(planted.FEATURES))


def read_planted_truth(data_directory: Path) -> dict[str, np.ndarray] | None:
    """`{"labels": [tokens, features] bool, "floor_nll": [tokens], "features": [features]}` of
    the validation split, or None when the run's data is not planted."""
    path = DataLayout(Path(data_directory)).planted_truth
    if not path.exists():
        return None
    with np.load(path) as truth:
        return {key: truth[key] for key in truth.files}


def _load_prepared(directory: Path, settings: dict) -> TokenArrays:
    data = DataLayout(directory)
    manifest_path = data.manifest
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataPreparationError(f"{manifest_path} is unreadable ({error}); delete "
                                   f"{directory} to rebuild the token arrays") from error
    stored = {key: manifest.get(key) for key in settings}
    if stored != settings:
        changed = ", ".join(f"{key}: {stored[key]!r} there, {settings[key]!r} now"
                            for key in settings if stored[key] != settings[key])
        raise DataPreparationError(
            f"{directory} holds tokens prepared with other data settings ({changed}); use a "
            "new --workdir, or delete that folder to re-tokenize")
    _check_tokenizer(directory, manifest)
    arrays = {}
    for split in SPLITS:
        path = data.split(split)
        expected = manifest["splits"][split]["tokens"]
        size = path.stat().st_size if path.exists() else -1
        if size != expected * np.dtype(manifest["dtype"]).itemsize:
            raise DataPreparationError(f"{path} should hold {expected} tokens but is "
                                       f"{max(size, 0)} bytes; delete {directory} to rebuild it")
        arrays[split] = np.memmap(path, dtype=manifest["dtype"], mode="r")
    return TokenArrays(train=arrays["train"], validation=arrays["validation"], manifest=manifest)


def _check_tokenizer(directory: Path, manifest: dict) -> None:
    """Token arrays are reused only beside the tokenizer file that made them: another one, or
    one retrained because its file went missing, maps the same ids to other text. A manifest
    written before fingerprints were recorded has none to compare; its file must still exist."""
    if manifest["tokenizer"] not in FILE_KINDS:
        return
    path = DataLayout(directory).tokenizer
    fix = (f"restore it, or delete {directory} to re-tokenize, which means training the model "
           "again from scratch (it learnt these token ids)")
    if not path.exists():
        raise DataPreparationError(
            f"{path} is missing, but the token arrays beside it were made with it; {fix}")
    recorded = manifest.get("tokenizer_fingerprint")
    if recorded is not None and tokenizer_fingerprint(manifest["tokenizer"], directory) != recorded:
        raise DataPreparationError(
            f"{path} is not the tokenizer the token arrays beside it were made with (its sha256 "
            f"differs from the one in {DataLayout(directory).manifest}); {fix}")


