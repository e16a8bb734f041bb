"""Where training text comes from: one entry point that turns a source string into documents.

Source strings (the `data.source` config value):

- `'stdlib'`: the running Python's standard-library prose (see `stdlib_corpus`), prepared
  into `data_dir` on first use through its TFDS builder and reused afterwards.
- `'text:<glob>'`: local UTF-8 text files, one document per file, in sorted path order; ids
  are paths relative to the glob's leading folder (`text:/data/**/*.txt` -> `a/b.txt`). A file
  that is not UTF-8 text is refused, whatever its name (`_decode_text_file`).
- `'tfds:<name>[/<config>][:<split>]'`: a TFDS text data set already prepared (as ArrayRecord)
  under `data_dir`; the split defaults to `train`.
- `'planted[:<documents>]'`: the planted corpus (see `planted`), generated from seed 0 with
  known per-token features and entropy floor; 20,000 documents (~1.1 M words) by default. Use
  it with `data.tokenizer='word'` so that one token is one word.

Nothing here touches the network: a TFDS data set that is not on disk fails at once with the
command that would prepare it. Every source has a JSON-serialisable fingerprint, written next
to each run, so a result can be traced to the exact text it saw.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from crate_jax.data import planted

# tensorflow_datasets (and the stdlib corpus, a TFDS builder) are imported where a TFDS source is
# read: a third of a second that the planted and text sources, and every other stage, never need.
if TYPE_CHECKING:
    import tensorflow_datasets as tfds

VALID_SOURCES = ("'stdlib', 'planted[:<documents>]', 'text:<glob>' or "
                 "'tfds:<name>[/<config>][:<split>]'")
PLANTED_SEED = 0
PLANTED_DOCUMENTS = 20_000
DEFAULT_TFDS_SPLIT = "train"

_TFDS_SPEC = re.compile(r"^(?P<name>[a-z0-9_]+)(?:/(?P<config>[\w.\-]+))?(?::(?P<split>.+))?$")
_GLOB_MAGIC = re.compile(r"[*?[]")
_VERSION_FOLDER = re.compile(r"^\d+\.\d+\.\d+$")
# Examples read per ArrayRecord call: large enough to amortise the call, small enough to stream.
_READ_CHUNK = 256


class SourceError(ValueError):
    """A source string that cannot be read, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One unit of text.

    `id` is stable across runs and machines (a text file's path relative to the folder its glob
    starts at, a stdlib module path such as `json/__init__.py`, a TFDS `id` feature, or else
    `<dataset>[/<config>]:<split>/<index>`): the train/validation split is made by hashing it.
    """

    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    name: str
    config: str | None
    split: str

    @property
    def label(self) -> str:
        return self.name if self.config is None else f"{self.name}/{self.config}"


@dataclasses.dataclass(frozen=True)
class _PreparedTfds:
    """A TFDS data set found on disk: its exact folder and the split to read."""

    spec: _TfdsSpec
    config: str | None
    version: str
    data_dir: str

    @property
    def label(self) -> str:
        return self.spec.name if self.config is None else f"{self.spec.name}/{self.config}"

    @property
    def versioned_name(self) -> str:
        return f"{self.label}:{self.version}"


def read_documents(source: str, data_dir: str | os.PathLike) -> Iterator[Document]:
    """The documents of `source`, in the same order on every call.

    Checks the source (and prepares the stdlib corpus) before returning, so a bad source fails
    at this call rather than at the first `next()`. Raises `SourceError` with the fix.
    """
    scheme, argument = _split_source(source)
    if scheme == "stdlib":
        return _read_tfds(_prepared_stdlib(data_dir))
    if scheme == "planted":
        return (Document(id=_planted_id(index), text=text)
                for index, text in enumerate(_planted_texts(_planted_count(argument))))
    if scheme == "text":
        return _read_text_files(_matching_files(argument), _glob_root(argument))
    return _read_tfds(_find_prepared_tfds(_parse_tfds_spec(argument), data_dir))


def source_fingerprint(source: str, data_dir: str | os.PathLike) -> dict:
    """A JSON-serialisable description of exactly which text `source` gives.

    stdlib: the interpreter, stdlib path, counts and a sha256 of the documents. text: the
    pattern, the file count and a sha256 of the contents. tfds: name, config, version, split
    and number of examples.
    """
    scheme, argument = _split_source(source)
    if scheme == "stdlib":
        from crate_jax.data import stdlib_corpus

        fingerprint = stdlib_corpus.stdlib_fingerprint(data_dir)
    elif scheme == "planted":
        fingerprint = {"generator": planted.GENERATOR_VERSION, "seed": PLANTED_SEED,
                       "documents": _planted_count(argument)}
    elif scheme == "text":
        fingerprint = _text_fingerprint(argument)
    else:
        fingerprint = _tfds_fingerprint(_find_prepared_tfds(_parse_tfds_spec(argument), data_dir))
    fingerprint = {"source": source, **fingerprint}
    json.dumps(fingerprint)  # Fails here, not when a run writes it, if a value is not JSON.
    return fingerprint


def _split_source(source: str) -> tuple[str, str]:
    if source in ("stdlib", "planted"):
        return source, ""
    scheme, colon, argument = source.partition(":")
    if colon and scheme in ("text", "tfds", "planted") and argument:
        if scheme == "planted":
            _planted_count(argument)
        return scheme, argument
    raise SourceError(f"unknown data source {source!r}; valid forms are {VALID_SOURCES}")


# --- planted: the generated corpus with ground truth ----------------------------------------


def _planted_count(argument: str) -> int:
    if not argument:
        return PLANTED_DOCUMENTS
    if not argument.isdigit() or int(argument) < 1:
        raise SourceError(f"'planted:{argument}': the argument is a number of documents, e.g. "
                          f"'planted:{PLANTED_DOCUMENTS}'")
    return int(argument)


@functools.lru_cache(maxsize=2)
def _planted_texts(count: int) -> tuple[str, ...]:
    """Generated once per process: tokenizing reads the documents several times (tokenizer
    training, then each split), and 20,000 documents take about 15 s to generate."""
    return tuple(document.text for _, document in planted.generate_documents(PLANTED_SEED, count))


def _planted_id(index: int) -> str:
    return f"planted/{index}"


def planted_document_ids(source: str) -> list[str]:
    """The ids `read_documents` gives a planted source, in order, without generating it."""
    scheme, argument = _split_source(source)
    if scheme != "planted":
        raise SourceError(f"data source {source!r} is not planted")
    return [_planted_id(index) for index in range(_planted_count(argument))]


def planted_ground_truth(document_ids: Sequence[str]) -> Iterator[planted.PlantedDocument]:
    """The generator's ground truth (labels, floor) of the given planted documents, in order."""
    for doc_id in document_ids:
        yield planted.generate_document(PLANTED_SEED, int(doc_id.removeprefix("planted/")))


def is_planted(source: str) -> bool:
    return _split_source(source)[0] == "planted"


# --- text: local files -------------------------------------------------------------------------


def _matching_files(pattern: str) -> list[str]:
    """The regular files matching `pattern` (`~` and `**` allowed), sorted by path."""
    paths = glob.glob(os.path.expanduser(pattern), recursive=True)
    files = sorted(path for path in paths if os.path.isfile(path))
    if not files:
        raise SourceError(f"no files match 'text:{pattern}' (from {os.getcwd()})")
    return files


def _glob_root(pattern: str) -> str:
    """The folder a pattern is anchored at: its leading parts before the first wildcard.

    `/data/books/**/*.txt` -> `/data/books`; `/data/one.txt` -> `/data`; `*.txt` -> ``.
    """
    parts = pathlib.PurePath(os.path.expanduser(pattern)).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return str(pathlib.PurePath(*fixed)) if fixed else ""


def _read_text_files(files: Sequence[str], root: str) -> Iterator[Document]:
    for path in files:
        text = _decode_text_file(path)
        # Ids relative to the pattern's folder, so moving the corpus keeps the validation split.
        doc_id = pathlib.PurePath(os.path.relpath(path, root) if root else path).as_posix()
        yield Document(id=doc_id, text=text)


def _decode_text_file(path: str) -> str:
    """A `text:` file's text: its bytes decoded as UTF-8 (a leading byte order mark dropped),
    the same way whatever the file is called.

    A file that is not valid UTF-8, or that holds a NUL byte (binary data, or UTF-16 text, whose
    ASCII bytes are otherwise valid UTF-8), is refused, naming it and the first bad byte. Reading
    it with replacement characters, or guessing another encoding, would train on text that is
    not the file's without saying so; and one bad byte points to a wrong file (Latin-1, binary)
    as surely as many do, while the fix (`iconv`, or leaving the file out) is one command.
    """
    data = pathlib.Path(path).read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise SourceError(
            f"{path} holds a NUL byte (at byte {nul}): it is binary data or UTF-16 text, not UTF-8 "
            "text; convert it (iconv -f UTF-16 -t UTF-8) or leave it out of the text: pattern")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise SourceError(
            f"{path} is not UTF-8 text (byte {data[error.start]:#04x} at byte {error.start}); "
            "convert it (e.g. iconv -f LATIN1 -t UTF-8) or leave it out of the text: pattern"
        ) from None


def _text_fingerprint(pattern: str) -> dict:
    digest = hashlib.sha256()
    files = _matching_files(pattern)
    for path in files:
        content = pathlib.Path(path).read_bytes()
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return {"pattern": pattern, "num_files": len(files), "sha256": digest.hexdigest()}


# --- stdlib and tfds: TFDS data sets on disk ---------------------------------------------------


def _prepared_stdlib(data_dir: str | os.PathLike) -> _PreparedTfds:
    from crate_jax.data import stdlib_corpus

    stdlib_corpus.prepare_stdlib_corpus(data_dir)
    spec = _TfdsSpec(
        name=stdlib_corpus.STDLIB_CORPUS_NAME,
        config=stdlib_corpus.python_config_name(),
        split=DEFAULT_TFDS_SPLIT,
    )
    return _PreparedTfds(spec, spec.config, stdlib_corpus.STDLIB_CORPUS_VERSION, str(data_dir))


def _parse_tfds_spec(argument: str) -> _TfdsSpec:
    match = _TFDS_SPEC.match(argument)
    if not match:
        raise SourceError(
            f"cannot read TFDS source 'tfds:{argument}'; expected "
            "'tfds:<name>[/<config>][:<split>]' with a snake_case name, e.g. 'tfds:lm1b:train'"
        )
    return _TfdsSpec(match["name"], match["config"], match["split"] or DEFAULT_TFDS_SPLIT)


def _prepared_versions(folder: pathlib.Path) -> list[str]:
    """Versions (`1.0.0`) whose generation finished in `folder`, oldest first.

    tfds writes into `incomplete.*` folders and renames them when done, and `dataset_info.json`
    is written last, so a version folder with that file is complete.
    """
    if not folder.is_dir():
        return []
    versions = [
        child.name
        for child in folder.iterdir()
        if _VERSION_FOLDER.match(child.name) and (child / "dataset_info.json").is_file()
    ]
    return sorted(versions, key=lambda version: tuple(int(part) for part in version.split(".")))


def _find_prepared_tfds(spec: _TfdsSpec, data_dir: str | os.PathLike) -> _PreparedTfds:
    """Finds `spec` under `data_dir` by looking at folders only: no builder code, no network.

    Without a config, a data set prepared without configs is used, or the only prepared config.
    """
    dataset_folder = pathlib.Path(data_dir) / spec.name
    config = spec.config
    versions = _prepared_versions(dataset_folder / config if config else dataset_folder)
    if not versions and config is None and dataset_folder.is_dir():
        configs = sorted(
            child.name for child in dataset_folder.iterdir() if _prepared_versions(child)
        )
        if len(configs) > 1:
            choices = ", ".join(f"'tfds:{spec.name}/{name}'" for name in configs)
            raise SourceError(
                f"tfds:{spec.name} has several configs prepared under {data_dir}; "
                f"name one: {choices}"
            )
        if configs:
            config = configs[0]
            versions = _prepared_versions(dataset_folder / config)
    if not versions:
        raise SourceError(_not_prepared_message(spec, data_dir))
    return _PreparedTfds(spec, config, versions[-1], os.fspath(data_dir))


def _not_prepared_message(spec: _TfdsSpec, data_dir: str | os.PathLike) -> str:
    import tensorflow_datasets as tfds

    known = tfds.list_builders(with_community_datasets=False)  # The community list needs TF.
    build = (
        f"on a machine with network run `tfds build {spec.label} --data_dir={data_dir} "
        f"--file_format=array_record` (or, in Python, `tfds.builder('{spec.label}', "
        f"data_dir='{data_dir}', file_format='array_record').download_and_prepare()`) "
        f"and copy {pathlib.Path(data_dir) / spec.name} here"
    )
    if spec.name in known:
        return f"tfds:{spec.label} is not prepared under {data_dir}; {build}"
    close = difflib.get_close_matches(spec.name, known, n=5)
    hint = f" (did you mean {', '.join(repr(name) for name in close)}?)" if close else ""
    return (
        f"unknown TFDS data set {spec.name!r}{hint}: it is not a builder this tfds installation "
        f"knows and nothing by that name is prepared under {data_dir}; if the name is right, "
        f"{build}"
    )


def _data_source(prepared: _PreparedTfds) -> Sequence[dict]:
    """tfds' random-access reader of the prepared split.

    With an explicit version tfds reads the folder's own dataset_info.json rather than builder
    code, so data sets prepared elsewhere (or by builders this machine lacks) read the same.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            prepared.versioned_name,
            split=prepared.spec.split,
            data_dir=prepared.data_dir,
            download=False,
            try_gcs=False,
        )
    except NotImplementedError as error:  # Prepared as TFRecord, which needs TensorFlow.
        raise SourceError(
            f"tfds:{prepared.versioned_name} under {prepared.data_dir} is not stored as "
            f"ArrayRecord; rebuild it with --file_format=array_record ({error})"
        ) from error
    except (KeyError, ValueError) as error:
        raise SourceError(
            f"cannot read split {prepared.spec.split!r} of tfds:{prepared.versioned_name} "
            f"under {prepared.data_dir}: {error}"
        ) from error


def _text_feature(features: tfds.features.FeaturesDict, label: str) -> str:
    """The feature holding the text: `text`, else the only string feature."""
    if "text" in features:
        return "text"
    strings = sorted(name for name, feature in features.items() if _is_string(feature))
    if len(strings) != 1:
        raise SourceError(
            f"tfds:{label} has no feature named 'text' and {len(strings)} string features "
            f"({', '.join(strings) or 'none'}); cannot tell which holds the text"
        )
    return strings[0]


def _is_string(feature: tfds.features.FeatureConnector) -> bool:
    """Whether `feature` is one string per example (`np_dtype`: `.dtype` would import TF)."""
    import tensorflow_datasets as tfds

    return (
        isinstance(feature, tfds.features.Tensor)
        and feature.shape == ()
        and np.dtype(feature.np_dtype) == np.dtype(object)
    )


def _as_text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _read_tfds(prepared: _PreparedTfds) -> Iterator[Document]:
    """Documents of a prepared TFDS split; ids from an `id` string feature if there is one."""
    source = _data_source(prepared)
    features = source.dataset_info.features
    text_name = _text_feature(features, prepared.versioned_name)
    has_ids = "id" in features and _is_string(features["id"])
    return _iter_tfds(source, prepared, text_name, has_ids)


def _iter_tfds(
    source: Sequence[dict], prepared: _PreparedTfds, text_name: str, has_ids: bool
) -> Iterator[Document]:
    prefix = f"{prepared.label}:{prepared.spec.split}"
    for start in range(0, len(source), _READ_CHUNK):
        indices = range(start, min(start + _READ_CHUNK, len(source)))
        for index, example in zip(indices, source.__getitems__(list(indices)), strict=True):
            doc_id = _as_text(example["id"]) if has_ids else f"{prefix}/{index}"
            yield Document(id=doc_id, text=_as_text(example[text_name]))


def _tfds_fingerprint(prepared: _PreparedTfds) -> dict:
    source = _data_source(prepared)
    return {
        "name": prepared.spec.name,
        "config": prepared.config,
        "version": prepared.version,
        "split": prepared.spec.split,
        "num_examples": len(source),
    }
