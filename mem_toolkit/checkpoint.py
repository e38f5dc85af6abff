"""Atomic checkpoints as one safetensors file (tensors) with JSON metadata: no pickle, no torn files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write

_META = "mem_toolkit_state"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically: a failed write (a full disk) leaves the previous file valid."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(cpu, str(tmp), metadata=metadata)
        except SafetensorError as error:  # safetensors reports I/O errors (ENOSPC too) as its own type
            raise OSError(str(error)) from error

    atomic_write(path, write)


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write tensors + JSON-able state to `path` atomically: an interrupted write keeps the previous checkpoint valid."""
    save_tensors(path, tensors, {_META: json.dumps(state)})


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what `save_state` wrote."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if _META not in meta:
            raise ValueError(f"{path} is not a mem_toolkit checkpoint")
        return {k: handle.get_tensor(k) for k in handle.keys()}, json.loads(meta[_META])


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into tensors and JSON-able parts."""
    state = optimizer.state_dict()
    tensors = {f"{prefix}{index}.{key}": value for index, entry in state["state"].items() for key, value in entry.items() if torch.is_tensor(value)}
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict, prefix: str = "optim.") -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
