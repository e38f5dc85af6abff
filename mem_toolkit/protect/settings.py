"""Protection settings given as `KEY=VALUE` text (a study's `--set`, a benchmark's), checked against `ProtectConfig`."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Iterable

from .base import LIST_SETTINGS, ProtectConfig


def parse_settings(items: Iterable[str]) -> dict[str, object]:
    """`["eps=16", "granularity=cluster"]` -> `{"eps": 16, "granularity": "cluster"}`: values as JSON where they
    parse (numbers, true/false, lists), else strings; a list setting (`eot`) also takes comma-separated names
    (`eot=jpeg,crop-flip`); a missing `=` or a name `ProtectConfig` lacks is a ValueError."""
    known = {f.name for f in fields(ProtectConfig)}
    settings = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"setting {item!r} is not KEY=VALUE")
        if key not in known:
            raise ValueError(f"setting {key!r} is not a protection setting; choose from {', '.join(sorted(known))}")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text
        if key in LIST_SETTINGS:
            value = settings[key]
            settings[key] = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    return settings
