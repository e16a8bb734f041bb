"""Tokenize a source once into flat token arrays on disk: `train.bin` and `validation.bin`.

Documents are split into train and validation by a hash of their id (independent of any training
seed, so every variant of a study is validated on the same text), tokenized, joined with the
end-of-text token and written as raw uint16 (uint32 for vocabularies above 65536). `tokens.json`
beside them records what produced them; a rerun with the same data settings reuses the arrays,
different settings in the same workdir are an error rather than a silent mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crate_jax.data import planted
from crate_jax.data.sources import (
    Document,
    is_planted,
    planted_document_ids,
    planted_ground_truth,
    read_documents,
    source_fingerprint,
)
from crate_jax.data.tokenizer import TextTokenizer, load_or_train_tokenizer

SPLITS = ("train", "validation")
MANIFEST = "tokens.json"
# Planted sources only: per validation token, its ground-truth features and the generator's
# exact negative log-likelihood (the entropy floor), aligned with `validation.bin`.
PLANTED_TRUTH = "planted_validation_truth.npz"
_ENCODE_CHUNK = 512  # documents per `encode_batch` call: parallel, yet bounded memory


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
    if is_planted(data_config.source):
        _check_planted_settings(data_config.tokenizer, vocab_size)
    directory = Path(workdir) / "data"
    settings = {"source": data_config.source, "tokenizer": data_config.tokenizer,
                "vocab_size": vocab_size, "val_fraction": data_config.val_fraction}
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        return _load_prepared(directory, settings)

    data_dir = resolve_data_dir(data_config.data_dir)
    fraction = data_config.val_fraction
    source = data_config.source

    def documents(split: str) -> Iterator[Document]:
        return (doc for doc in read_documents(source, data_dir)
                if is_validation(doc.id, fraction) == (split == "validation"))

    tokenizer = load_or_train_tokenizer(data_config.tokenizer, directory, vocab_size,
                                        (doc.text for doc in documents("train")))
    dtype = token_dtype(vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    splits = {split: _write_split(documents(split), tokenizer, directory / f"{split}.bin", dtype)
              for split in SPLITS}
    if splits["validation"]["tokens"] == 0:
        splits = _hold_out_tail(directory, dtype, fraction, splits)
    if is_planted(source):
        validation_ids = [doc_id for doc_id in planted_document_ids(source)
                          if is_validation(doc_id, fraction)]
        _write_planted_truth(directory / PLANTED_TRUTH, validation_ids,
                             splits["validation"]["tokens"])
    manifest = {**settings, "dtype": dtype.name, "splits": splits,
                "fingerprint": source_fingerprint(source, data_dir),
                "end_of_text": tokenizer.end_of_text, "tokenizer_vocab_size": tokenizer.vocab_size}
    write_json_atomically(manifest_path, manifest)  # written last: its presence means "complete"
    return _load_prepared(directory, settings)


def _write_split(documents: Iterator[Document], tokenizer: TextTokenizer, path: Path,
                 dtype: np.dtype) -> dict:
    """Tokenizes `documents` into `path` (each followed by end-of-text); returns counts."""
    counts = {"documents": 0, "tokens": 0, "bytes": 0}
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        chunk: list[str] = []

        def flush() -> None:
            for ids in tokenizer.encode_batch(chunk):
                np.asarray([*ids, tokenizer.end_of_text], dtype).tofile(file)
                counts["tokens"] += len(ids) + 1
            chunk.clear()

        for document in documents:
            chunk.append(document.text)
            counts["documents"] += 1
            counts["bytes"] += len(document.text.encode("utf-8"))
            if len(chunk) == _ENCODE_CHUNK:
                flush()
        flush()
    os.replace(temporary, path)
    return counts


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
    with open(path.with_suffix(".tmp"), "wb") as file:
        np.savez(file, labels=labels, floor_nll=floor.astype(np.float64),
                 features=np.asarray(planted.FEATURES))
    os.replace(path.with_suffix(".tmp"), path)


def read_planted_truth(data_directory: Path) -> dict[str, np.ndarray] | None:
    """`{"labels": [tokens, features] bool, "floor_nll": [tokens], "features": [features]}` of
    the validation split, or None when the run's data is not planted."""
    path = Path(data_directory) / PLANTED_TRUTH
    if not path.exists():
        return None
    with np.load(path) as truth:
        return {key: truth[key] for key in truth.files}


def _hold_out_tail(directory: Path, dtype: np.dtype, fraction: float, splits: dict) -> dict:
    """With too few documents for a document-level split (one big text file, say), the last
    `fraction` of the training tokens becomes the validation split instead."""
    train = np.fromfile(directory / "train.bin", dtype)
    if train.size < 2:
        raise DataPreparationError(f"the training text produced {train.size} tokens; "
                                   "the source is empty")
    cut = train.size - max(1, int(train.size * fraction))
    train[cut:].tofile(directory / "validation.tmp")
    train[:cut].tofile(directory / "train.tmp")
    os.replace(directory / "validation.tmp", directory / "validation.bin")
    os.replace(directory / "train.tmp", directory / "train.bin")
    total_bytes = splits["train"]["bytes"]
    return {"train": {"documents": splits["train"]["documents"], "tokens": int(cut),
                      "bytes": round(total_bytes * cut / train.size)},
            "validation": {"documents": 0, "tokens": int(train.size - cut),
                           "bytes": round(total_bytes * (train.size - cut) / train.size),
                           "held_out": "tail of the training tokens"}}


def _load_prepared(directory: Path, settings: dict) -> TokenArrays:
    manifest_path = directory / MANIFEST
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
    arrays = {}
    for split in SPLITS:
        path = directory / f"{split}.bin"
        expected = manifest["splits"][split]["tokens"]
        size = path.stat().st_size if path.exists() else -1
        if size != expected * np.dtype(manifest["dtype"]).itemsize:
            raise DataPreparationError(f"{path} should hold {expected} tokens but is "
                                       f"{max(size, 0)} bytes; delete {directory} to rebuild it")
        arrays[split] = np.memmap(path, dtype=manifest["dtype"], mode="r")
    return TokenArrays(train=arrays["train"], validation=arrays["validation"], manifest=manifest)


def write_json_atomically(path: Path, value: dict) -> None:
    """Temp file + rename: a crash leaves the old file or the new one, never half of one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(temporary, path)
