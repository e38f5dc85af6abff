"""Atomic checkpoints as one safetensors file (tensors) with JSON metadata: no pickle, no torn files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_META = "mem_toolkit_state"


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write tensors + JSON-able state to `path` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={_META: json.dumps(state)})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
