"""Reading and writing the files PyTorch-side models live in: `torch.save` pickles (`.pt`,
`pytorch_model.bin`) and safetensors.

PyTorch and safetensors are the optional `convert` extra (`pip install -e '.[convert]'`), so
they are imported here, when a conversion runs, and their absence is one clear error. Every
tensor comes out as a float32 NumPy array (our parameters are float32; a half-precision file
widens exactly), and every unreadable file is a `ConversionError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crate_jax.atomic_files import atomic_path


class ConversionError(RuntimeError):
    """A file that cannot be converted, or a model no format can hold; the message names the
    file, tensor or setting, and the fix."""


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ConversionError("converting PyTorch-side models needs PyTorch and safetensors: "
                              "pip install -e '.[convert]'") from error
    return torch


def read_torch_pickle(path: Path) -> dict:
    """The object a `torch.save` file holds (a dict), its tensors left as tensors.

    `weights_only=True` unpickles tensors and plain containers only, never code; `mmap=True`
    leaves the tensors on disk until read, so a checkpoint that carries its optimizer state
    (the paper's does) costs the memory of the model alone.
    """
    torch = _torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # zip, pickle and storage errors come as many types
        try:  # a file of PyTorch before 1.6 cannot be memory-mapped, only read
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConversionError(f"cannot read {path} as a PyTorch checkpoint "
                                  f"({_first_line(error)}); is the file complete?") from error
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not the dict of a "
                              "checkpoint or state dict")
    return loaded


def read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, by name."""
    _torch()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConversionError(f"cannot read {path} as safetensors ({_first_line(error)}); is "
                              "the file complete?") from error


def as_array(name: str, tensor: Any) -> np.ndarray:
    """A tensor of a state dict as a float32 array; anything else in its place is an error."""
    torch = _torch()
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{name} is a {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise ConversionError(f"{name} holds {tensor.dtype} values, not a parameter's floats")
    return tensor.detach().to(torch.float32).numpy()


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    torch = _torch()
    # PyTorch wants contiguous, writable memory; a copy is made only where the array is not.
    return {name: torch.from_numpy(np.require(array, requirements=("C", "W")))
            for name, array in arrays.items()}


def write_torch_pickle(path: Path, value: dict) -> None:
    """`torch.save(value)`, written under a temporary name and renamed when complete."""
    torch = _torch()
    with atomic_path(path) as temporary:
        torch.save(value, temporary)


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A safetensors file of `arrays`, with the `format: pt` metadata transformers expects."""
    _torch()
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file(as_tensors(arrays), str(temporary), metadata={"format": "pt"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
