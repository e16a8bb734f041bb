"""The config a run workdir saved (its `config.json`), for running stages on a workdir made
without a config file of its own: a model imported by `python -m crate_jax.convert`.

    python -m crate_jax.main --config=configs/workdir.py:runs/paper_crate \\
        --workdir=runs/paper_crate --config.stages=interp --config.data.source=text:/data/*.txt

Any key can be overridden as with the other configs.
"""

import json
from pathlib import Path

import ml_collections


def get_config(workdir=None):
    if not workdir:
        raise ValueError("name the workdir after a colon: --config=configs/workdir.py:<workdir>")
    path = Path(workdir).expanduser() / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: this config reads the config a workdir saved "
                         "(python -m crate_jax.convert writes one)")
    return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))
