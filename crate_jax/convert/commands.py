"""The two conversions as functions: `import_model` (a file into a run workdir) and
`export_model` (a workdir's model into a file), what `python -m crate_jax.convert` runs; they
raise `ConversionError` (and the run's own errors) with a message for the user."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from crate_jax.convert.formats import (
    ImportedModel,
    check_format,
    read_model,
    source_files,
    write_model,
)
from crate_jax.convert.tensor_files import ConversionError
from crate_jax.convert.tokenizer_files import (
    MERGES_FILE,
    VOCAB_FILE,
    find_tokenizer,
    read_tokenizer,
)
from crate_jax.convert.workdir import (
    check_convertible_workdir,
    file_digest,
    read_run_model,
    write_converted_run,
)
from crate_jax.data.tokenizer import GPT2_VOCAB_SIZE, SavedTokenizer
from crate_jax.input_checks import check_workdir
from crate_jax.layout import RunLayout
from crate_jax.model import count_parameters
from crate_jax.versions import package_versions
from crate_jax.workdir_lock import hold_workdir


def import_model(format_name: str, source: Path, workdir: Path, tokenizer_path: Path | None,
                 step: int | None) -> None:
    """Reads `source` and writes it into `workdir` (see `workdir.write_converted_run`)."""
    started = time.perf_counter()
    check_format(format_name)
    if not source.exists():
        raise ConversionError(f"--checkpoint={source} does not exist")
    if tokenizer_path is not None and not tokenizer_path.exists():
        raise ConversionError(f"--tokenizer={tokenizer_path} does not exist")
    if step is not None and step < 0:
        raise ConversionError(f"--step={step} must be 0 or more")
    check_workdir(workdir, stages=())
    files = source_files(format_name, source)
    tokenizer_file = _tokenizer_file(format_name, files[0].parent, tokenizer_path)
    identity = {"format": format_name, "source_sha256": file_digest(list(files)),
                "tokenizer_sha256": _tokenizer_digest(tokenizer_file), "requested_step": step}
    with hold_workdir(workdir):
        if check_convertible_workdir(workdir, identity):
            print(f"convert: {workdir} already holds this conversion of {source}; nothing to do",
                  flush=True)
            return
        tokenizer = None if tokenizer_file is None else read_tokenizer(tokenizer_file)
        print(f"convert: reading {source} ({format_name})", flush=True)
        imported = read_model(format_name, source)
        if step is not None:
            imported = dataclasses.replace(imported, step=step)
        kind = _tokenizer_kind(imported, tokenizer, tokenizer_file)
        record = {**identity, "source": str(source.absolute()),
                  "source_files": [str(path.absolute()) for path in files],
                  "tokenizer": None if tokenizer_file is None else str(tokenizer_file.absolute()),
                  "tokenizer_kind": kind, "step": imported.step,
                  "description": imported.description,
                  "model": dataclasses.asdict(imported.settings), "versions": package_versions()}
        write_converted_run(workdir, imported, tokenizer, kind, record)
    parameters = count_parameters(imported.params, exclude=())
    print(f"convert: {imported.description}, {parameters:,} parameters, "
          f"step {imported.step}, tokenizer {kind} -> {workdir} in "
          f"{time.perf_counter() - started:.1f} s\n"
          f"  its stages: python -m crate_jax.main --config=configs/workdir.py:{workdir} "
          f"--workdir={workdir} --config.stages=interp", flush=True)


def export_model(format_name: str, workdir: Path, target: Path, step: int | None) -> None:
    """Writes `workdir`'s model (checkpoint `step`, or the latest) as `format_name` at `target`."""
    started = time.perf_counter()
    check_format(format_name)
    if target.exists():
        raise ConversionError(f"--checkpoint={target} exists; give a new path (an export "
                              "never overwrites)")
    run = read_run_model(workdir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    files = write_model(format_name, run.settings, run.params, run.step, target)
    tokenizer = RunLayout(workdir).data.tokenizer
    if format_name == "hf-gpt2" and tokenizer.exists():
        shutil.copyfile(tokenizer, target / "tokenizer.json")
        files.append(target / "tokenizer.json")
    print(f"convert: {workdir} step {run.step} ({run.settings.attention}+"
          f"{run.settings.sparse_block}) -> {format_name}: {', '.join(map(str, files))} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)


def _tokenizer_file(format_name: str, folder: Path, given: Path | None) -> Path | None:
    """The tokenizer file to import: the one given, else a Hugging Face folder's own."""
    if given is not None:
        found = find_tokenizer(given)
        if found is None:
            raise ConversionError(f"--tokenizer={given}: no tokenizer.json, and no vocab.json "
                                  "with merges.txt, there")
    else:
        found = find_tokenizer(folder) if format_name == "hf-gpt2" else None
    if found is not None and found.name == VOCAB_FILE and not found.with_name(
            MERGES_FILE).is_file():
        raise ConversionError(f"{found.with_name(MERGES_FILE)} is missing; GPT-2's BPE needs it "
                              f"beside {found}")
    return found


def _tokenizer_kind(imported: ImportedModel, tokenizer: SavedTokenizer | None,
                    path: Path | None) -> str:
    """`data.tokenizer` of the workdir: `imported` for a tokenizer file that fits the model,
    else tiktoken's GPT-2 BPE for a model with room for GPT-2's vocabulary."""
    vocab_size = imported.settings.vocab_size
    if tokenizer is not None:
        if tokenizer.vocab_size > vocab_size:
            raise ConversionError(
                f"the tokenizer {path} has {tokenizer.vocab_size} tokens but the model's "
                f"vocabulary is {vocab_size}; give the tokenizer it was trained with")
        return "imported"
    if vocab_size >= GPT2_VOCAB_SIZE:
        print("convert: no tokenizer given; the workdir uses tiktoken's GPT-2 BPE "
              "(data.tokenizer='gpt2', needs tiktoken and its cached files), the paper's",
              flush=True)
        return "gpt2"
    raise ConversionError(
        f"the model's vocabulary has {vocab_size} tokens, not GPT-2's: give the tokenizer it was "
        "trained with, --tokenizer=<tokenizer.json, or a folder with vocab.json and merges.txt>")


def _tokenizer_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    files = [path, path.with_name(MERGES_FILE)] if path.name == VOCAB_FILE else [path]
    return file_digest(files)
