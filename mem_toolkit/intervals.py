"""Mean and 95 % interval of a figure repeated over seeds, and how tables print them.

A hacker trained once says little on small data: retrieval moves by several points between
seeds. Every study table therefore reports the mean over seeds with the half-width of Student's
t interval (n - 1 degrees of freedom), and checks use the interval's bounds, not the mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """The mean of some values and the half-width of its 95 % t interval (0 for one value: no spread is known)."""

    mean: float
    half_width: float
    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 1) -> str:
        """`12.3 ± 1.4`, or `12.3` for a single value."""
        text = f"{self.mean:.{digits}f}"
        return text if len(self.values) < 2 else f"{text} ± {self.half_width:.{digits}f}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "low": self.low, "high": self.high, "values": list(self.values)}


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval half-width of `values` (one per seed)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("an interval needs at least one value")
    if array.size == 1:
        return Interval(float(array[0]), 0.0, (float(array[0]),))
    half = stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size)
    return Interval(float(array.mean()), float(half), tuple(float(v) for v in array))


def intervals(finals: Sequence[Mapping[str, float]], metrics: Sequence[str] | None = None) -> dict[str, Interval]:
    """Per metric, the interval over several runs' final metrics (every numeric metric the runs share by default)."""
    if not finals:
        raise ValueError("no runs to summarise")
    keys = metrics or [k for k, v in finals[0].items() if isinstance(v, (int, float)) and all(k in f for f in finals)]
    return {key: interval([f[key] for f in finals]) for key in keys}


def format_cell(value: Interval | float, metric: str) -> str:
    """A table cell (a value, or an interval over seeds): ranks (MedR) without decimals, recalls with one."""
    digits = 0 if metric.endswith("MedR") else 1
    return value.format(digits) if isinstance(value, Interval) else f"{value:.{digits}f}"
