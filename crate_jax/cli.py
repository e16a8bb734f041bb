"""Command-line plumbing shared by the entry points: the `--config` flag and clear flag errors.

A misspelt override such as `--config.model.atention=mhsa` otherwise ends in a three-deep
traceback from absl and ml_collections; here it is one line naming the key and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

CONFIG_FLAG = "config"


def define_config_flag() -> flags.FlagHolder:
    """`--config=configs/<variant>.py[:size]`, locked so that overrides cannot add keys."""
    return config_flags.DEFINE_config_file(
        CONFIG_FLAG, None, "Experiment config file, e.g. configs/crate.py:2l; override keys with "
        "--config.model.num_layers=4", lock_config=True)


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
    return module.get_config(arg) if arg else module.get_config()


def parse_flags(argv: Sequence[str]) -> list[str]:
    """A `flags_parser` for `absl.app.run` that turns config errors into one clear line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as error:
        sys.exit(f"FATAL: {_explain_flag_error(error, argv)}")


def _explain_flag_error(error: Exception, argv: Sequence[str]) -> str:
    specs = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{CONFIG_FLAG}=")]
    specs += [value for flag, value in zip(argv, argv[1:], strict=False)
              if flag == f"--{CONFIG_FLAG}"]
    if specs and isinstance(error, (AttributeError, KeyError)):
        # The config file itself loaded (else absl would have raised flags.Error), so an
        # override named a missing key: find which one, with its full dotted path.
        problem = unknown_override(load_config_file(specs[-1]), argv)
        if problem:
            return problem
    message = str(error)
    if "Traceback" in message:
        # ml_collections embeds the config file's traceback; its first and last lines suffice.
        lines = [line for line in message.splitlines() if line.strip()]
        message = f"{lines[0]} {lines[-1]}"
    return message
