"""An imported model's tokenizer, from the files the Hugging Face Hub gives for GPT-2's BPE.

Either a `tokenizer.json` (the `tokenizers` library's file) or the older pair `vocab.json` +
`merges.txt`, which is rebuilt here as GPT-2's byte-level BPE. The result is saved as the
workdir's `data/tokenizer.json`, where every later stage finds it (`data.tokenizer='imported'`).
Nothing is downloaded: the paths are the user's.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from crate_jax.convert.tensor_files import ConversionError
from crate_jax.data.tokenizer import END_OF_TEXT, SavedTokenizer

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


def find_tokenizer(path: Path) -> Path | None:
    """The tokenizer in `path` (a file, or a folder holding `tokenizer.json` or `vocab.json` and
    `merges.txt`), or None when the folder has neither."""
    if path.is_file():
        return path
    for name in (TOKENIZER_FILE, VOCAB_FILE):
        if (path / name).is_file():
            return path / name
    return None


def read_tokenizer(path: Path) -> SavedTokenizer:
    """The tokenizer at `path` (see `find_tokenizer`); it must have `<|endoftext|>`, which
    separates documents in the token arrays."""
    found = find_tokenizer(path) if path.exists() else None
    if found is None:
        raise ConversionError(
            f"--tokenizer={path}: no {TOKENIZER_FILE}, and no {VOCAB_FILE} with {MERGES_FILE}, "
            "there")
    if found.name == VOCAB_FILE:
        tokenizer = _gpt2_bpe(found, found.with_name(MERGES_FILE))
    else:
        try:
            tokenizer = Tokenizer.from_file(str(found))
        except Exception as error:  # tokenizers raises a bare Exception on a bad file
            raise ConversionError(f"cannot read {found} as a tokenizer.json ({error})") from None
    if tokenizer.token_to_id(END_OF_TEXT) is None:
        raise ConversionError(f"{found} has no {END_OF_TEXT} token; crate_jax separates "
                              "documents with it, as GPT-2 does")
    return SavedTokenizer(tokenizer)


def _gpt2_bpe(vocab: Path, merges: Path) -> Tokenizer:
    """GPT-2's byte-level BPE from its vocabulary and merges, `<|endoftext|>` kept whole."""
    if not merges.is_file():
        raise ConversionError(f"{merges} is missing; GPT-2's BPE needs it beside {vocab}")
    try:
        tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as error:
        raise ConversionError(f"cannot read {vocab} and {merges} as a BPE ({error})") from None
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if tokenizer.token_to_id(END_OF_TEXT) is not None:
        tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return tokenizer
