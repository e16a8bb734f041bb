"""Tokenizers: a byte-level BPE or a word-level vocabulary trained on the run's own training text,
an imported model's own tokenizer, or GPT-2's BPE through tiktoken.

The BPE is the offline default: trained once on the training split (never on validation text, so
validation loss stays honest), saved as `tokenizer.json` in the workdir and reused by every later
stage and rerun. The word-level tokenizer (one token per whitespace-separated word) is for
languages with a small closed vocabulary, such as the planted corpus, where a token must be
exactly one word for the ground-truth labels to line up. An imported model's tokenizer
(`imported`) is the `tokenizer.json` that `python -m crate_jax.convert --tokenizer=...` put in the
workdir: never trained, never replaced. GPT-2's BPE (what the paper uses) needs the optional
`tiktoken` package and its cached vocabulary files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from crate_jax.atomic_files import atomic_path
from crate_jax.layout import DataLayout

END_OF_TEXT = "<|endoftext|>"
UNKNOWN_WORD = "<|unknown|>"
TRAINED_KINDS = ("bpe", "word")
# Kinds whose vocabulary is the `tokenizer.json` in the data folder (fingerprinted with it).
FILE_KINDS = (*TRAINED_KINDS, "imported")
TOKENIZER_KINDS = (*FILE_KINDS, "gpt2")
GPT2_VOCAB_SIZE = 50257  # tiktoken's "gpt2" encoding: 50000 merges, 256 bytes, end-of-text


def smallest_vocab_size(kind: str) -> int:
    """The fewest tokens a `kind` tokenizer has whatever the text, so that a model too small for
    it is refused before the tokenizer is trained: byte-level BPE starts from its 256 byte tokens
    and end-of-text; GPT-2's is fixed; a word vocabulary needs end-of-text and unknown-word."""
    if kind == "bpe":
        return len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if kind == "gpt2":
        return GPT2_VOCAB_SIZE
    return 2  # a word vocabulary; an imported file is checked against the model when loaded


class TokenizerError(RuntimeError):
    """A tokenizer that cannot be built or loaded; the message says what to install or fix."""


class TextTokenizer(Protocol):
    """What the pipeline needs of a tokenizer. `end_of_text` separates documents."""

    vocab_size: int
    end_of_text: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class SavedTokenizer:
    """A `tokenizers` tokenizer trained here and saved as `tokenizer.json` (BPE or word-level)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.end_of_text = tokenizer.token_to_id(END_OF_TEXT)
        self._word_level = isinstance(tokenizer.model, models.WordLevel)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes in parallel threads (the `tokenizers` Rust core); same result as `encode`."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; `<|endoftext|>` is shown, not dropped, so a neuron that fires on
        document boundaries reads as such in its records and explanation.

        A word-level token decodes with the space that separated it from the word before (as a
        byte-level BPE token does), so records decoded token by token read as text.
        """
        if self._word_level:
            return "".join(" " + self._tokenizer.id_to_token(i) for i in ids)
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, path: Path) -> None:
        # The bytes of the library's own `save`, written by Python: a full disk is then an
        # OSError with its errno (the entry's one line), not a bare "os error 28" Exception.
        with atomic_path(path) as temporary:  # never leave a half-written tokenizer behind
            temporary.write_text(self._tokenizer.to_str(pretty=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> SavedTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"cannot read tokenizer {path}: {error}; delete its folder to "
                                 "retrain it with the token arrays") from error


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> SavedTokenizer:
    """Trains a byte-level BPE with `vocab_size` entries, `<|endoftext|>` among them.

    Deterministic for the same texts in the same order, so a rerun rebuilds the same vocabulary.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return SavedTokenizer(tokenizer)


def train_word_level(texts: Iterable[str], vocab_size: int) -> SavedTokenizer:
    """One token per whitespace-separated word seen in `texts` (at most `vocab_size` entries,
    `<|endoftext|>` and an unknown-word token among them). Deterministic for the same texts."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN_WORD))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size,
                                        special_tokens=[END_OF_TEXT, UNKNOWN_WORD],
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return SavedTokenizer(tokenizer)


class Gpt2Tiktoken:
    """GPT-2's 50257-token BPE via tiktoken (the paper's tokenizer)."""

    def __init__(self):
        try:
            import tiktoken
        except ImportError as error:
            raise TokenizerError("data.tokenizer='gpt2' needs the tiktoken package: "
                                 "pip install tiktoken (or use data.tokenizer='bpe')") from error
        try:
            self._encoding = tiktoken.get_encoding("gpt2")
        except Exception as error:  # network errors surface as many types
            raise TokenizerError(
                "tiktoken could not load GPT-2's BPE files (offline?): fetch them once on a "
                "machine with network and point TIKTOKEN_CACHE_DIR at that cache, or use "
                f"data.tokenizer='bpe'. Cause: {error}") from error
        self.vocab_size = self._encoding.n_vocab
        self.end_of_text = self._encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode(list(ids))


def load_or_train_tokenizer(kind: str, workdir: Path, vocab_size: int,
                            training_texts: Iterable[str]) -> TextTokenizer:
    """The run's tokenizer: reused from `workdir` if saved there, else built (and saved).

    `training_texts` is only consumed when a BPE must be trained. Only the data stage, which
    tokenizes with what it trains here, may call this; later stages use `load_saved_tokenizer`.
    """
    path = DataLayout(workdir).tokenizer
    if kind not in TRAINED_KINDS or path.exists():
        return load_saved_tokenizer(kind, workdir, vocab_size)
    train = train_byte_level_bpe if kind == "bpe" else train_word_level
    tokenizer = train(training_texts, vocab_size)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return _fitting(tokenizer, kind, vocab_size)


def load_saved_tokenizer(kind: str, directory: Path, vocab_size: int) -> TextTokenizer:
    """The tokenizer the token arrays in `directory` were made with; never trains one.

    A trained tokenizer rebuilt now would be another vocabulary (on no text: 257 byte tokens),
    so token ids would decode to the wrong words: its file missing is an error, not a retrain.
    """
    if kind == "gpt2":
        return _fitting(Gpt2Tiktoken(), kind, vocab_size)
    if kind not in FILE_KINDS:
        raise TokenizerError(f"data.tokenizer={kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
    path = DataLayout(directory).tokenizer
    if kind == "imported" and not path.exists():
        raise TokenizerError(
            f"data.tokenizer='imported' reads {path}, the imported model's tokenizer, and it is "
            "missing: convert the model again with --tokenizer=<its tokenizer.json, or the "
            "folder with vocab.json and merges.txt>")
    if not path.exists():
        raise TokenizerError(
            f"{path} is missing, but the token arrays in {directory} were made with it and "
            "another tokenizer would decode them to other text: restore it, or delete "
            f"{directory} and retrain the run from scratch (its model learned those tokens)")
    return _fitting(SavedTokenizer.load(path), kind, vocab_size)


def _fitting(tokenizer: TextTokenizer, kind: str, vocab_size: int) -> TextTokenizer:
    """`tokenizer`, once its ids are known to fit the model's embedding table."""
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(
            f"the {kind} tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
            f"{vocab_size}; raise model.vocab_size (the paper pads GPT-2's 50257 to 50304)")
    return tokenizer
