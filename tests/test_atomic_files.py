"""Files written whole or not at all: the old file survives a failed write, none is left half."""

import json
import os

import numpy as np
import pytest

from crate_jax.atomic_files import atomic_path, write_json_atomically, write_text_atomically


def test_json_is_written_sorted_and_indented_and_replaces_the_file_keeping_its_mode(tmp_path):
    path = tmp_path / "summary.json"
    value = {"b": [1, 2], "a": {"z": 0.5, "y": "é"}}
    write_json_atomically(path, value)
    assert path.read_text() == json.dumps(value, indent=2, sort_keys=True)
    os.chmod(path, 0o640)
    write_json_atomically(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "tokens.json"
    write_text_atomically(path, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["tokens.json"]


def test_any_library_can_write_the_temporary_path(tmp_path):
    path = tmp_path / "statistics.npz"
    with atomic_path(path) as temporary:
        assert temporary.parent == tmp_path and temporary != path
        assert not path.exists(), "the final name appears only once the file is whole"
        with open(temporary, "wb") as file:
            np.savez(file, values=np.arange(3))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["values"], np.arange(3))
    assert os.listdir(tmp_path) == ["statistics.npz"]
