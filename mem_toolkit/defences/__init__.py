"""The hacker's defences: named transformations of published files (images, captions, the protected share) or of the hacker's training.

`apply_defence(name, csv, out)` writes the defended copy of a published folder (PNGs +
captions.csv); `defended_config(name, config)` gives the hacker's TrainConfig under a training
defence; `DEFENCES` lists every name with its kind and parameters.
"""
from .apply import apply_defence
from .registry import DEFENCES, KINDS, Defence, defended_config, get_defence

__all__ = ["DEFENCES", "KINDS", "Defence", "apply_defence", "defended_config", "get_defence"]
