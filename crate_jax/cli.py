"""Command-line plumbing shared by the entry points: the `--config` flag and clear flag errors.

A misspelt override such as `--config.model.atention=mhsa`, a config file that is missing or
does not load, otherwise ends in a traceback from absl and ml_collections; here it is one line
naming the key or the file and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from crate_jax.model import ConfigError

CONFIG_FLAG = "config"


def define_config_flag() -> flags.FlagHolder:
    """`--config=configs/<variant>.py[:size]`, locked so that overrides cannot add keys."""
    return config_flags.DEFINE_config_file(
        CONFIG_FLAG, None, "Config file, with an optional size preset after a colon: "
        "configs/crate.py or configs/crate.py:2l (its docstring lists the presets). Override any "
        "key with --config.<key>=<value>, e.g. --config.train.num_steps=100; choose the stages "
        "with --config.stages=train,interp.", lock_config=True)


def unknown_override(config, argv: Sequence[str]) -> str | None:
    """The first `--config.<key>` override in `argv` that names no key of `config`, explained."""
    prefix = f"--{CONFIG_FLAG}."
    for argument in argv:
        if not argument.startswith(prefix):
            continue
        path = argument[len(prefix):].split("=", 1)[0].split(".")
        node = config
        for depth, key in enumerate(path):
            if not hasattr(node, "keys"):
                break  # a value, not a ConfigDict: ml_collections reports it itself
            if key not in node:
                known = list(node.keys())
                close = difflib.get_close_matches(key, known, n=1)
                parent = ".".join(path[:depth])
                spelled = ".".join(path[:depth + 1])
                hint = f" (did you mean '{'.'.join(path[:depth] + close[:1])}'?)" if close else ""
                where = f" under '{parent}'" if parent else ""
                return (f"unknown config key '{spelled}'{hint}; keys{where}: "
                        + ", ".join(map(str, known)))
            node = node[key]
    return None


def load_config_file(spec: str):
    """The config that `--config=<path>[:arg]` names, loaded the way `config_flags` loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_crate_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--{CONFIG_FLAG}={path} defines no get_config(arg=None), the function "
                          "that returns the config (see configs/crate.py)")
    return module.get_config(arg) if arg else module.get_config()


def parse_flags(argv: Sequence[str]) -> list[str]:
    """A `flags_parser` for `absl.app.run` that turns config errors into one clear line."""
    problem = _not_utf8(argv)
    if problem:
        sys.exit(f"FATAL: {problem}")
    spec = _config_spec(argv)
    if spec is not None:
        problem = _unreadable_config_file(spec.partition(":")[0])
        if problem:
            sys.exit(f"FATAL: {problem}")
        _make_config_package_importable(spec.partition(":")[0])
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as error:
        sys.exit(f"FATAL: {_explain_flag_error(error, argv)}")
    except Exception as error:  # raised by the config file's own code (SyntaxError, ImportError)
        sys.exit(f"FATAL: {_config_file_failure(spec, error)}")


def _not_utf8(argv: Sequence[str]) -> str | None:
    """The first argument that is not UTF-8, named with its bytes escaped.

    Python hands such bytes over as lone surrogates; every value ends up in a UTF-8 file
    (config.json, the reports), where writing them fails, after the work, on every rerun."""
    for argument in argv:
        raw = os.fsencode(argument)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            shown = raw.decode("utf-8", "backslashreplace")
            return (f"{shown} is not UTF-8 (byte {raw[error.start]:#04x}); the run writes its "
                    "settings into UTF-8 files, so give the value in UTF-8")
    return None


def _config_spec(argv: Sequence[str]) -> str | None:
    """The value of the last `--config=<path>[:arg]` (or `--config <path>`) in `argv`."""
    specs = [(index, a.split("=", 1)[1]) for index, a in enumerate(argv)
             if a.startswith(f"--{CONFIG_FLAG}=")]
    specs += [(index, value) for index, (flag, value) in enumerate(zip(argv, argv[1:],
                                                                       strict=False))
              if flag == f"--{CONFIG_FLAG}"]
    return max(specs)[1] if specs else None


def _unreadable_config_file(path: str) -> str | None:
    """Why the config file at `path` cannot be read, listing its folder's files when missing.

    `config_flags` would defer this error to the config's first use, as a traceback."""
    try:
        with open(path, "rb"):
            return None
    except OSError as error:
        reason = error.strerror or str(error)
    file = Path(path)
    where = "" if file.is_absolute() else f" (relative to {Path.cwd()})"
    siblings = sorted(p.name for p in file.parent.glob("*.py") if not p.name.startswith("_"))
    listing = f"; {file.parent}/ holds {', '.join(siblings)}" if siblings else ""
    return f"--{CONFIG_FLAG}={path}: {reason}{where}{listing}"


def _make_config_package_importable(path: str) -> None:
    """Config files import their siblings as a package (`from configs import crate`), which
    resolves only from the folder above that package (the repository root). Putting that folder
    first on `sys.path` lets `--config=/abs/path/configs/gpt2.py` run from any directory, and
    makes `configs` the package of the file given (the one a study's variants come from)."""
    folder, root = Path(path).resolve().parent, None
    while (folder / "__init__.py").is_file():
        folder = root = folder.parent
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _config_file_failure(spec: str | None, error: BaseException) -> str:
    """One line for an exception raised by the config file's own code, with its line number."""
    path = (spec or "").partition(":")[0]
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if path and Path(frame.filename).resolve() == Path(path).resolve()]
    at = f" at line {lines[-1]}" if lines else ""
    return (f"--{CONFIG_FLAG}={spec}: the config file failed{at}: {type(error).__name__}: "
            f"{error}; fix {path or 'it'}")


def _explain_flag_error(error: Exception, argv: Sequence[str]) -> str:
    spec = _config_spec(argv)
    if spec is not None and isinstance(error, (AttributeError, KeyError)):
        # Either the config file failed (no get_config) or, once it loads, an override named
        # a missing key: find which one, with its full dotted path.
        try:
            config = load_config_file(spec)
        except ConfigError as load_error:
            return str(load_error)
        except Exception as load_error:  # the config file itself failed
            return _config_file_failure(spec, load_error)
        problem = unknown_override(config, argv)
        if problem:
            return problem
    message = str(error)
    if "Traceback" in message:
        # ml_collections embeds the config file's traceback; its first and last lines suffice.
        lines = [line for line in message.splitlines() if line.strip()]
        message = f"{lines[0]} {lines[-1]}"
    return message
